//! The web interface (SPEC §14, R-W1..R-W5, R-W7) through real HTTP on
//! SQLite and PostgreSQL: sign-in and sessions, CSRF refusals, escaping,
//! the stale-edit page, lists, record pages and their timelines.

mod common;

use common::browser::{client, set_cookie, Browser, Page};
use common::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crmsync_server::web::session;

fn user_id(v: &Value) -> Uuid {
    Uuid::parse_str(v.as_str().unwrap()).unwrap()
}

#[track_caller]
fn assert_security_headers(p: &Page, what: &str) {
    let h = |k: &str| {
        p.headers
            .get(k)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let csp = h("content-security-policy");
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(part), "{what}: CSP {csp:?} lacks {part}");
    }
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
    assert_eq!(h("referrer-policy"), "same-origin", "{what}");
}

/// Sets a password straight in the store, as `crmsync admin user passwd` does.
async fn with_password(s: &TestServer, email: &str, password: &str) {
    crmsync_server::passwords::set_password(&s.store, email, password)
        .await
        .unwrap();
}

async fn sign_in(b: &Browser<'_>, email: &str, password: &str) -> Page {
    let form = b.get("/signin").await;
    assert_eq!(form.status, 200);
    let pre = set_cookie(&form.headers, "crmsync_signin")
        .expect("the sign-in form pairs its token with a cookie");
    let pre = pre.split(';').next().unwrap().to_string();
    let csrf = form.hidden("_csrf");
    let mut req = b
        .http
        .post(format!("{}/signin", b.s.base))
        .header("cookie", pre)
        .header("origin", &b.s.base);
    req = req.form(&[
        ("_csrf", csrf.as_str()),
        ("email", email),
        ("password", password),
        ("next", "/contacts"),
    ]);
    Page::of(req.send().await.unwrap()).await
}

both_dbs! {
    async fn r_w2_pages_redirect_to_signin_when_not_signed_in(s: TestServer) {
        let b = Browser::anonymous(&s);
        for path in ["/", "/contacts", "/activities", "/sync", "/admin", "/contacts/new"] {
            let p = b.get(path).await;
            assert_eq!(p.status, StatusCode::SEE_OTHER, "{path}");
            assert!(p.location().starts_with("/signin"), "{path}: {}", p.location());
        }
        assert_eq!(b.get("/contacts?q=x").await.location(), "/signin?next=%2Fcontacts%3Fq%3Dx");
        // A forged or ended session is no session.
        let forged = Browser { s: &s, http: client(), cookie: format!("{}=deadbeef", session::COOKIE) };
        assert_eq!(forged.get("/contacts").await.status, StatusCode::SEE_OTHER);
        // The API is untouched: JSON errors, not pages.
        let api = s.http.get(format!("{}/api/v1/contacts", s.base)).send().await.unwrap();
        assert_eq!(api.status(), 401);
    }

    async fn r_w2_password_sign_in_and_sign_out(s: TestServer) {
        let (_, _) = s.add_user("ann@example.com").await;
        with_password(&s, "ann@example.com", "ann's long secret").await;
        let b = Browser::anonymous(&s);
        let signed = sign_in(&b, "Ann@Example.com", "ann's long secret").await;
        assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.html);
        assert_eq!(signed.location(), "/contacts");
        let cookie = set_cookie(&signed.headers, session::COOKIE).unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
        assert!(!cookie.contains("Secure"), "plain http: {cookie}");
        let b = Browser { s: &s, http: client(), cookie: cookie.split(';').next().unwrap().to_string() };
        let contacts = b.get("/contacts").await;
        assert_eq!(contacts.status, 200);
        for name in ["Accounts", "Contacts", "Leads", "Opportunities", "Cases", "Activities", "Sync", "Sign out"] {
            assert!(contacts.html.contains(&format!(">{name}<")), "navigation names {name}");
        }
        assert!(!contacts.html.contains(">Admin<"), "Admin is for admins only");
        let csrf = contacts.hidden("_csrf");
        let out = b.post("/signout", &[("_csrf", &csrf)]).await;
        assert_eq!(out.status, StatusCode::SEE_OTHER);
        assert_eq!(out.location(), "/signin");
        assert_eq!(b.get("/contacts").await.status, StatusCode::SEE_OTHER, "the session ended");

        // Behind https the cookie is Secure.
        let form = b.get("/signin").await;
        let secure = b.http.get(format!("{}/signin", s.base)).header("x-forwarded-proto", "https").send().await.unwrap();
        assert!(set_cookie(secure.headers(), "crmsync_signin").unwrap().contains("Secure"));
        assert!(!set_cookie(&form.headers, "crmsync_signin").unwrap().contains("Secure"));
    }

    async fn r_w2_wrong_password_is_refused_and_retries_are_slowed(s: TestServer) {
        s.add_user("bob@example.com").await;
        with_password(&s, "bob@example.com", "the right password").await;
        let b = Browser::anonymous(&s);
        for _ in 0..3 {
            let p = sign_in(&b, "bob@example.com", "a wrong password").await;
            assert_eq!(p.status, StatusCode::UNAUTHORIZED);
            assert!(p.html.contains("Wrong email or password"), "{}", p.html);
            assert!(set_cookie(&p.headers, session::COOKIE).is_none());
        }
        // Now even the right password must wait.
        let p = sign_in(&b, "bob@example.com", "the right password").await;
        assert_eq!(p.status, StatusCode::TOO_MANY_REQUESTS, "{}", p.html);
        assert!(p.html.contains("wait"), "{}", p.html);
        assert!(set_cookie(&p.headers, session::COOKIE).is_none());
        // Another account is not slowed; an unknown one is refused alike.
        assert_eq!(sign_in(&b, "nobody@example.com", "whatever it is").await.status, StatusCode::UNAUTHORIZED);
        // Once the delay has passed (the failures are in the database,
        // shared by every server process), the right password works.
        sqlx::query("UPDATE signin_failures SET last_failure_at = last_failure_at - 60").execute(&s.store.pool).await.unwrap();
        // Of sign-ins sent at once after the wait, one is checked.
        let tries = futures_util::future::join_all((0..4).map(|_| sign_in(&b, "bob@example.com", "still wrong"))).await;
        let checked = tries.iter().filter(|p| p.status == StatusCode::UNAUTHORIZED).count();
        assert_eq!(checked, 1, "{:?}", tries.iter().map(|p| p.status).collect::<Vec<_>>());
        assert!(tries.iter().all(|p| p.status == StatusCode::UNAUTHORIZED || p.status == StatusCode::TOO_MANY_REQUESTS));
        sqlx::query("UPDATE signin_failures SET last_failure_at = last_failure_at - 60").execute(&s.store.pool).await.unwrap();
        let p = sign_in(&b, "bob@example.com", "the right password").await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.html);
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM signin_failures WHERE email = 'bob@example.com'").fetch_one(&s.store.pool).await.unwrap();
        assert_eq!(left, 0, "a sign-in clears the failures");
    }

    async fn r_w2_sign_in_form_without_its_token_is_refused(s: TestServer) {
        s.add_user("cat@example.com").await;
        with_password(&s, "cat@example.com", "cat's password!").await;
        let b = Browser::anonymous(&s);
        let p = b.post("/signin", &[("email", "cat@example.com"), ("password", "cat's password!")]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert!(set_cookie(&p.headers, session::COOKIE).is_none());
    }

    async fn r_w2_one_time_link_works_once_and_expires(s: TestServer) {
        let (id, _) = s.add_user("dan@example.com").await;
        let id = Uuid::parse_str(&id).unwrap();
        let token = session::create_link(&s.store, id).await.unwrap();
        let b = Browser::anonymous(&s);
        let first = b.get(&format!("/signin/link/{token}")).await;
        assert_eq!(first.status, StatusCode::SEE_OTHER);
        let cookie = set_cookie(&first.headers, session::COOKIE).expect("the link signs in");
        let signed = Browser { s: &s, http: client(), cookie: cookie.split(';').next().unwrap().into() };
        assert_eq!(signed.get("/contacts").await.status, 200);
        let again = b.get(&format!("/signin/link/{token}")).await;
        assert_eq!(again.status, StatusCode::GONE, "a link works once");
        assert!(set_cookie(&again.headers, session::COOKIE).is_none());
        assert_security_headers(&again, "used link");

        let late = session::create_link(&s.store, id).await.unwrap();
        sqlx::query("UPDATE signin_links SET expires_at = expires_at - 601").execute(&s.store.pool).await.unwrap();
        assert_eq!(b.get(&format!("/signin/link/{late}")).await.status, StatusCode::GONE, "10 minutes at most");
        assert_eq!(b.get("/signin/link/not-a-token").await.status, StatusCode::GONE);
    }

    async fn r_w1_security_headers_on_every_page(s: TestServer) {
        let c = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Lee"})).await.expect(201);
        let id = c["id"].as_str().unwrap();
        let b = Browser::as_admin(&s).await;
        let anon = Browser::anonymous(&s);
        assert_security_headers(&anon.get("/signin").await, "/signin");
        assert_security_headers(&anon.get("/contacts").await, "redirect");
        for path in [
            "/accounts".to_string(), "/contacts".into(), "/leads".into(), "/opportunities".into(), "/cases".into(),
            "/tasks".into(), "/appointments".into(), "/phonecalls".into(), "/letters".into(), "/faxes".into(), "/emails".into(),
            "/activities".into(), "/sync".into(), "/admin".into(), "/contacts/new".into(),
            format!("/contacts/{id}"), format!("/contacts/{id}/edit"), format!("/contacts/{id}/delete"),
        ] {
            let p = b.get(&path).await;
            assert_eq!(p.status, 200, "{path}: {}", p.html);
            assert_security_headers(&p, &path);
            assert!(p.html.starts_with("<!DOCTYPE html>") && p.html.contains("<html lang=\"en\">") && p.html.contains("<main"), "{path}");
            assert!(!p.html.contains("style=\"") && !p.html.contains("<script") && !p.html.contains("<style"), "{path}: nothing inline");
            assert_eq!(p.headers["cache-control"], "no-store", "{path}");
        }
        let missing = b.get(&format!("/contacts/{}", Uuid::new_v4())).await;
        assert_eq!(missing.status, 404);
        assert_security_headers(&missing, "missing record");
        assert_eq!(b.get("/contacts/not-a-uuid").await.status, 404);
        // The stylesheet comes from the binary, cached for long.
        let page = b.get("/contacts").await;
        let css = page.html.split("href=\"/assets/").nth(1).unwrap().split('"').next().unwrap().to_string();
        let sheet = b.get(&format!("/assets/{css}")).await;
        assert_eq!(sheet.status, 200);
        assert!(sheet.headers["content-type"].to_str().unwrap().starts_with("text/css"));
        assert!(sheet.headers["cache-control"].to_str().unwrap().contains("max-age=31536000"));
        assert_eq!(b.get("/assets/other.css").await.status, 404);
    }

    async fn r_w1_hostile_text_is_escaped(s: TestServer) {
        let script = "<script>alert(1)</script>";
        let img = "\"><img src=x onerror=alert(2)>";
        let c = s.post(&s.admin, "/api/v1/contacts", json!({"first_name": script, "last_name": img, "notes": script, "email": "lee@example.org"})).await.expect(201);
        let id = c["id"].as_str().unwrap();
        let e = s.post(&s.admin, "/api/v1/emails", json!({
            "subject": img, "body_text": script, "body_html": "<img src=x onerror=alert(3)>",
            "from": "lee@example.org", "to": ["admin@example.com"],
            "parties": [{"address": "lee@example.org", "role": "from", "resolved": {"set": "contacts", "id": id}}],
            "regarding": {"set": "contacts", "id": id},
        })).await.expect(201);
        let b = Browser::as_admin(&s).await;
        for path in [format!("/contacts?q={}", "script"), format!("/contacts/{id}"), format!("/contacts/{id}/edit"), format!("/emails/{}", e["id"].as_str().unwrap()), "/emails".into()] {
            let p = b.get(&path).await;
            assert_eq!(p.status, 200, "{path}");
            assert!(!p.html.contains(script) && !p.html.contains("<img"), "{path} holds a raw tag:\n{}", p.html);
            assert!(p.html.contains("&#60;script&#62;") || p.html.contains("&#34;&#62;&#60;img"), "{path} shows the text escaped:\n{}", p.html);
        }
        let email = b.get(&format!("/emails/{}", e["id"].as_str().unwrap())).await;
        assert!(email.html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"), "the body is shown as text");
        assert!(email.html.contains(&format!("href=\"/contacts/{id}\"")), "the resolved sender links to the contact");
    }

    async fn r_w2_csrf_refusal_changes_nothing(s: TestServer) {
        let c = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Kept"})).await.expect(201);
        let id = user_id(&c["id"]);
        let version = c["version"].as_i64().unwrap().to_string();
        let b = Browser::as_admin(&s).await;
        let csrf = b.csrf().await;
        let edit = format!("/contacts/{id}/edit");
        let before = s.version().await;
        type Pairs<'a> = Vec<(&'a str, &'a str)>;
        let cases: Vec<(Pairs, Pairs)> = vec![
            (vec![("_version", &version), ("last_name", "Changed")], vec![]),
            (vec![("_csrf", "0000"), ("_version", &version), ("last_name", "Changed")], vec![]),
            (vec![("_csrf", &csrf), ("_version", &version), ("last_name", "Changed")], vec![("origin", "http://evil.example")]),
            (vec![("_csrf", &csrf), ("_version", &version), ("last_name", "Changed")], vec![("sec-fetch-site", "cross-site")]),
        ];
        for (form, headers) in &cases {
            let p = b.post_with(&edit, form, headers).await;
            assert_eq!(p.status, StatusCode::FORBIDDEN, "{form:?} {headers:?}");
            assert!(p.html.contains("Nothing was changed"), "{}", p.html);
            assert_security_headers(&p, "refusal");
        }
        for path in [format!("/contacts/{id}/delete"), "/contacts/new".into()] {
            let p = b.post_with(&path, &[("_version", &version), ("last_name", "New")], &[]).await;
            assert_eq!(p.status, StatusCode::FORBIDDEN, "{path}");
        }
        assert_eq!(b.post_with("/signout", &[], &[]).await.status, StatusCode::FORBIDDEN);
        let now = s.store.get(id).await.unwrap().expect("not deleted");
        assert_eq!(now.fields["last_name"], "Kept");
        assert_eq!(s.version().await, before, "nothing was written");
        assert_eq!(b.get("/contacts").await.status, 200, "and the session lives on");
        // The same form with its token goes through.
        let ok = b.post(&edit, &[("_csrf", &csrf), ("_version", &version), ("last_name", "Changed"), ("state", "active")]).await;
        assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.html);
        assert_eq!(s.store.get(id).await.unwrap().unwrap().fields["last_name"], "Changed");
    }

    async fn r_w4_stale_edit_shows_both_values(s: TestServer) {
        let c = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Original", "job_title": "CTO"})).await.expect(201);
        let id = c["id"].as_str().unwrap();
        let b = Browser::as_admin(&s).await;
        let form = b.get(&format!("/contacts/{id}/edit")).await;
        let shown_version = form.hidden("_version");
        let csrf = form.hidden("_csrf");
        // Someone else changes the record meanwhile.
        s.patch(&s.admin, &format!("/api/v1/contacts/{id}"), json!({"last_name": "Theirs"})).await.expect(200);
        let p = b.post(&format!("/contacts/{id}/edit"), &[("_csrf", &csrf), ("_version", &shown_version), ("last_name", "Mine"), ("job_title", "CTO"), ("state", "active")]).await;
        assert_eq!(p.status, StatusCode::CONFLICT, "{}", p.html);
        assert!(p.html.contains("changed this record after you opened it"), "{}", p.html);
        assert!(p.html.contains(">Mine<") && p.html.contains(">Theirs<"), "both values: {}", p.html);
        assert!(p.html.contains(">Last name<"));
        assert!(!p.html.contains(">Job title<"), "only fields that differ");
        let now = s.get(&s.admin, &format!("/api/v1/contacts/{id}")).await.expect(200);
        assert_eq!(now["last_name"], "Theirs", "nothing was overwritten");
    }

    async fn r_w4_refused_input_shows_the_message_next_to_the_field(s: TestServer) {
        let c = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Lee"})).await.expect(201);
        let id = c["id"].as_str().unwrap();
        let b = Browser::as_admin(&s).await;
        let form = b.get(&format!("/contacts/{id}/edit")).await;
        assert!(form.html.contains("<label for=\"f-first_name\">First name</label>"), "labels are field names in words");
        let before = s.version().await;
        let p = b.post(&format!("/contacts/{id}/edit"), &[("_csrf", &form.hidden("_csrf")), ("_version", &form.hidden("_version")),
            ("last_name", "Lee"), ("email", "not-an-address"), ("birthday", "2026-02-30"), ("state", "active")]).await;
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", p.html);
        assert!(p.html.contains("id=\"email-error\">Email: "), "{}", p.html);
        assert!(p.html.contains("id=\"birthday-error\">Birthday: "), "{}", p.html);
        assert!(p.html.contains("aria-invalid=\"true\""));
        assert!(p.html.contains("value=\"not-an-address\""), "the input is kept");
        assert_eq!(s.version().await, before, "nothing changed");
        // A create without the required field names it too.
        let p = b.post("/contacts/new", &[("_csrf", &form.hidden("_csrf")), ("first_name", "No last name")]).await;
        assert_eq!(p.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(p.html.contains("id=\"last_name-error\">Last name: is required"), "{}", p.html);
    }

    async fn r_a_web_edits_follow_the_api_access_rule(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        let (bob_id, _) = s.add_user("bob@example.com").await;
        let c = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Ann's"})).await.expect(201);
        let id = c["id"].as_str().unwrap();
        let bob = Browser::as_user(&s, Uuid::parse_str(&bob_id).unwrap()).await;
        let csrf = bob.csrf().await;
        let v = c["version"].as_i64().unwrap().to_string();
        let p = bob.post(&format!("/contacts/{id}/edit"), &[("_csrf", &csrf), ("_version", &v), ("last_name", "Bob's")]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert!(p.html.contains("only the owner"), "the API's message: {}", p.html);
        let p = bob.post(&format!("/contacts/{id}/delete"), &[("_csrf", &csrf), ("_version", &v)]).await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert_eq!(s.get(&ann, &format!("/api/v1/contacts/{id}")).await.expect(200)["last_name"], "Ann's");
        // The owner may, through a confirmation page.
        let ann_b = Browser::as_user(&s, Uuid::parse_str(&ann_id).unwrap()).await;
        let confirm = ann_b.get(&format!("/contacts/{id}/delete")).await;
        assert!(confirm.html.contains(">Delete</button>"));
        let p = ann_b.post(&format!("/contacts/{id}/delete"), &[("_csrf", &confirm.hidden("_csrf")), ("_version", &confirm.hidden("_version"))]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER);
        assert_eq!(s.get(&ann, &format!("/api/v1/contacts/{id}")).await.status, 404);
    }

    async fn r_w4_create_through_the_new_form(s: TestServer) {
        let b = Browser::as_admin(&s).await;
        let list = b.get("/contacts").await;
        assert!(list.html.contains("href=\"/contacts/new\">New</a>"));
        let form = b.get("/contacts/new").await;
        let p = b.post("/contacts/new", &[("_csrf", &form.hidden("_csrf")), ("first_name", "Ann"), ("last_name", "Lee"), ("email", "ann@x.org"), ("birthday", ""), ("state", "active")]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.html);
        let id = p.location().rsplit('/').next().unwrap().to_string();
        let c = s.get(&s.admin, &format!("/api/v1/contacts/{id}")).await.expect(200);
        assert_eq!((c["first_name"].as_str(), c["email"].as_str()), (Some("Ann"), Some("ann@x.org")));
        assert!(c.get("birthday").is_none(), "an empty field is left out");
        let page = b.get(&format!("/contacts/{id}")).await;
        assert!(page.html.contains("<dt>First name</dt>") && page.html.contains("ann@x.org"));
    }

    async fn r_w4_lists_search_sort_filter_and_page(s: TestServer) {
        let (ann_id, ann) = s.add_user("ann@example.com").await;
        for i in 0..55 {
            s.post(&s.admin, "/api/v1/leads", json!({"last_name": format!("Lead {i:02}"), "company_name": if i % 2 == 0 { "Even Corp" } else { "Odd Inc" }})).await.expect(201);
        }
        s.post(&ann, "/api/v1/leads", json!({"last_name": "Anns lead", "state": "qualified"})).await.expect(201);
        let b = Browser::as_user(&s, Uuid::parse_str(&ann_id).unwrap()).await;
        let rows = |p: &Page| p.html.matches("<th scope=\"row\">").count();
        let first = b.get("/leads").await;
        assert_eq!(rows(&first), 50);
        assert!(first.html.contains("Anns lead"), "newest change first");
        let next = first.html.split("rel=\"prev\"").next().unwrap();
        let next_href = first.link("next");
        assert!(!next.contains("Previous page"));
        let second = b.get(&next_href).await;
        assert_eq!(rows(&second), 6);
        assert!(!second.html.contains("Next page"));
        let prev_href = second.link("prev");
        let back = b.get(&prev_href).await;
        assert_eq!(rows(&back), 50);
        assert!(back.html.contains("Anns lead"), "the previous page is the first again");
        // Search, Mine, state.
        assert_eq!(rows(&b.get("/leads?q=odd+inc").await), 27);
        let mine = b.get("/leads?owner=mine").await;
        assert_eq!(rows(&mine), 1);
        assert!(mine.html.contains("Anns lead"));
        assert_eq!(rows(&b.get("/leads?state=qualified").await), 1);
        assert_eq!(rows(&b.get("/leads?state=open&q=lead+0").await), 10);
        // Sorted by name, ascending, then the other way; pages follow the order.
        let asc = b.get("/leads?sort=last_name&dir=asc").await;
        let pos = |p: &Page, t: &str| p.html.find(t).unwrap_or(usize::MAX);
        assert!(pos(&asc, "Anns lead") < pos(&asc, "Lead 00") && pos(&asc, "Lead 00") < pos(&asc, "Lead 01"));
        assert!(asc.html.contains("aria-sort=\"ascending\""));
        let next_href = asc.link("next");
        let asc2 = b.get(&next_href).await;
        assert!(asc2.html.contains("Lead 54") && asc2.html.contains("Lead 49") && !asc2.html.contains("Lead 48<"), "{}", asc2.html);
        let desc = b.get("/leads?sort=last_name&dir=desc").await;
        assert!(pos(&desc, "Lead 54") < pos(&desc, "Lead 53"));
        // A search too long gets the API's message, not a failure.
        let long = b.get(&format!("/leads?q={}", "x".repeat(201))).await;
        assert_eq!(long.status, 200);
        assert!(long.html.contains("at most 200 characters"));
    }

    async fn r_w5_record_page_shows_the_timeline_newest_first(s: TestServer) {
        let acc = s.post(&s.admin, "/api/v1/accounts", json!({"name": "Acme"})).await.expect(201);
        let aid = acc["id"].as_str().unwrap();
        let contact = s.post(&s.admin, "/api/v1/contacts", json!({"last_name": "Lee", "email": "lee@example.org", "account_id": aid})).await.expect(201);
        let cid = contact["id"].as_str().unwrap();
        let regarding = json!({"set": "accounts", "id": aid});
        s.post(&s.admin, "/api/v1/tasks", json!({"subject": "Older task", "regarding": regarding})).await.expect(201);
        s.post(&s.admin, "/api/v1/phonecalls", json!({"subject": "Newer call", "regarding": regarding})).await.expect(201);
        s.post(&s.admin, "/api/v1/tasks", json!({"subject": "Unrelated task"})).await.expect(201);
        s.post(&s.admin, "/api/v1/emails", json!({"subject": "Mail from Lee", "from": "lee@example.org", "to": ["admin@example.com"],
            "parties": [{"address": "lee@example.org", "role": "from", "resolved": {"set": "contacts", "id": cid}}]})).await.expect(201);
        let b = Browser::as_admin(&s).await;
        let page = b.get(&format!("/accounts/{aid}")).await;
        assert!(page.html.contains("id=\"timeline\""));
        let pos = |t: &str| page.html.find(t).unwrap_or_else(|| panic!("{t} missing: {}", page.html));
        assert!(pos("Newer call") < pos("Older task"), "newest first");
        assert!(!page.html.contains("Unrelated task") && !page.html.contains("Mail from Lee"));
        let only_tasks = b.get(&format!("/accounts/{aid}?type=tasks")).await;
        assert!(only_tasks.html.contains("Older task") && !only_tasks.html.contains("Newer call"));
        // A contact's timeline holds the emails it is a party to; its page links its account by name.
        let cpage = b.get(&format!("/contacts/{cid}")).await;
        assert!(cpage.html.contains("Mail from Lee"), "{}", cpage.html);
        assert!(cpage.html.contains(&format!("<a href=\"/accounts/{aid}\">Acme</a>")));
    }

    async fn r_w7_admin_page_is_refused_to_plain_users(s: TestServer) {
        let (id, _) = s.add_user("eve@example.com").await;
        let eve = Browser::as_user(&s, Uuid::parse_str(&id).unwrap()).await;
        let p = eve.get("/admin").await;
        assert_eq!(p.status, StatusCode::FORBIDDEN);
        assert_security_headers(&p, "/admin refused");
        assert!(p.html.contains("Only an admin") && p.html.contains(">Sign out<"), "a page with the navigation: {}", p.html);
        assert!(!p.html.contains(">Admin<"));
        let admin = Browser::as_admin(&s).await;
        let p = admin.get("/admin").await;
        assert_eq!(p.status, 200);
        assert!(p.html.contains("eve@example.com"));
        assert!(p.html.contains(">Admin<"), "admins see the Admin link");
    }

    async fn r_w3_activities_lists_my_open_work(s: TestServer) {
        let (id, token) = s.add_user("fay@example.com").await;
        s.post(&token, "/api/v1/tasks", json!({"subject": "My open task", "due": "2026-12-24T10:00:00Z"})).await.expect(201);
        s.post(&token, "/api/v1/tasks", json!({"subject": "My done task", "state": "completed"})).await.expect(201);
        s.post(&token, "/api/v1/appointments", json!({"subject": "My meeting", "start": "2026-12-20T10:00:00Z", "end": "2026-12-20T11:00:00Z"})).await.expect(201);
        s.post(&s.admin, "/api/v1/tasks", json!({"subject": "Someone else's task"})).await.expect(201);
        let b = Browser::as_user(&s, Uuid::parse_str(&id).unwrap()).await;
        let p = b.get("/activities").await;
        assert!(p.html.contains("My open task") && p.html.contains("My meeting"));
        assert!(!p.html.contains("My done task") && !p.html.contains("Someone else"));
        assert!(p.html.find("My meeting").unwrap() < p.html.find("My open task").unwrap(), "soonest first");
        assert!(b.get("/sync").await.html.contains("No sync client has registered"));
    }

    async fn r_w5_set_regarding_changes_it_as_the_api_does(s: TestServer) {
        let acc = s.post(&s.admin, "/api/v1/accounts", json!({"name": "Acme Rockets"})).await.expect(201);
        s.post(&s.admin, "/api/v1/accounts", json!({"name": "Other Co"})).await.expect(201);
        let aid = acc["id"].as_str().unwrap();
        let task = s.post(&s.admin, "/api/v1/tasks", json!({"subject": "Call back"})).await.expect(201);
        let tid = task["id"].as_str().unwrap();
        let b = Browser::as_admin(&s).await;
        let record = b.get(&format!("/tasks/{tid}")).await;
        assert!(record.html.contains(&format!("href=\"/tasks/{tid}/regarding\">Set regarding</a>")));
        let page = b.get(&format!("/tasks/{tid}/regarding?target=accounts&q=rocket")).await;
        assert_eq!(page.status, 200, "{}", page.html);
        assert_security_headers(&page, "set regarding");
        assert!(page.html.contains("Acme Rockets") && !page.html.contains("Other Co"), "{}", page.html);
        let choice = format!("accounts/{aid}");
        assert!(page.html.contains(&format!("value=\"{choice}\"")));
        let (csrf, version) = (page.hidden("_csrf"), page.hidden("_version"));
        // Without its token, nothing changes.
        let refused = b.post_with(&format!("/tasks/{tid}/regarding"), &[("_version", &version), ("regarding", &choice)], &[]).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(s.get(&s.admin, &format!("/api/v1/tasks/{tid}")).await.expect(200).get("regarding").is_none());
        let p = b.post(&format!("/tasks/{tid}/regarding"), &[("_csrf", &csrf), ("_version", &version), ("regarding", &choice)]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.html);
        let t = s.get(&s.admin, &format!("/api/v1/tasks/{tid}")).await.expect(200);
        assert_eq!(t["regarding"], json!({"set": "accounts", "id": aid}));
        assert!(b.get(&format!("/accounts/{aid}")).await.html.contains("Call back"), "it is on the account's timeline");
        // The version shown is checked: a stale form changes nothing.
        let stale = b.post(&format!("/tasks/{tid}/regarding"), &[("_csrf", &csrf), ("_version", &version), ("regarding", "")]).await;
        assert_eq!(stale.status, StatusCode::CONFLICT);
        assert_eq!(s.get(&s.admin, &format!("/api/v1/tasks/{tid}")).await.expect(200)["regarding"]["id"], aid);
        // A regarding the API refuses is refused with its message.
        let bad = b.post(&format!("/tasks/{tid}/regarding"), &[("_csrf", &csrf), ("_version", &t["version"].to_string()), ("regarding", "tasks/00000000-0000-0000-0000-000000000001")]).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.html);
        assert!(bad.html.contains("cannot point to tasks"), "{}", bad.html);
    }

    async fn r_w5_why_not_in_my_mailbox_answers_as_explain_does(s: TestServer) {
        let (uid, token) = s.add_user("gus@example.com").await;
        let client = s.register(&token, "laptop").await;
        let cid = client["id"].as_str().unwrap().to_string();
        let c = s.post(&token, "/api/v1/contacts", json!({"last_name": "Inactive", "state": "inactive"})).await.expect(201);
        let id = c["id"].as_str().unwrap();
        let api = s.get(&token, &format!("/api/v1/sync/explain?client_id={cid}&set=contacts&id={id}")).await.expect(200);
        let b = Browser::as_user(&s, Uuid::parse_str(&uid).unwrap()).await;
        let record = b.get(&format!("/contacts/{id}")).await;
        assert!(record.html.contains("Why isn't this in my mailbox?"));
        let page = b.get(&format!("/contacts/{id}/explain")).await;
        assert_eq!(page.status, 200, "{}", page.html);
        assert!(page.html.contains("laptop"));
        for reason in api["reasons"].as_array().unwrap() {
            let text = reason.as_str().unwrap().replace('\'', "&#39;").replace('"', "&#34;");
            assert!(page.html.contains(&text), "the page gives the API's reason {text:?}: {}", page.html);
        }
        let verdict = if api["delivered"] == true { "It is meant to be there." } else { "It is not meant to be there." };
        assert!(page.html.contains(verdict), "{api}: {}", page.html);
    }

    async fn r_w6_make_primary_and_reset_from_the_sync_page(s: TestServer) {
        let (uid, token) = s.add_user("hal@example.com").await;
        let first = s.register(&token, "desktop").await;
        let second = s.register(&token, "laptop").await;
        assert_eq!(first["role"], "primary");
        let laptop = second["id"].as_str().unwrap();
        for name in ["One", "Two"] {
            s.post(&token, "/api/v1/contacts", json!({"last_name": name})).await.expect(201);
        }
        let delivered = s.sync_once(&token, first["id"].as_str().unwrap()).await;
        let b = Browser::as_user(&s, Uuid::parse_str(&uid).unwrap()).await;
        let page = b.get("/sync").await;
        let held = delivered.iter().filter(|d| d.action != "remove").count();
        assert!(held >= 2);
        assert!(page.html.contains("<th scope=\"row\">desktop</th><td>Primary</td><td>contacts, calendar, tasks, mail</td>"), "{}", page.html);
        assert!(page.html.contains(&format!("applied in the mailbox</td><td>{held}</td><td>0</td><td>0</td>")), "what the client holds: {}", page.html);
        assert!(page.html.contains("desktop") && page.html.contains("laptop") && page.html.contains(">Primary<"));
        let csrf = page.hidden("_csrf");
        assert_eq!(b.post_with(&format!("/sync/clients/{laptop}/primary"), &[], &[]).await.status, StatusCode::FORBIDDEN);
        let p = b.post(&format!("/sync/clients/{laptop}/primary"), &[("_csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.html);
        let clients = s.get(&token, "/api/v1/sync/clients").await.expect(200);
        let role = |name: &str| clients.as_array().or(clients["items"].as_array()).unwrap().iter().find(|c| c["name"] == name).unwrap()["role"].clone();
        assert_eq!(role("laptop"), "primary");
        assert_eq!(role("desktop"), "secondary");
        let p = b.post(&format!("/sync/clients/{laptop}/reset"), &[("_csrf", &csrf)]).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.html);
        // Another user's client is not theirs to change.
        let (other, _) = s.add_user("ivy@example.com").await;
        let ivy = Browser::as_user(&s, Uuid::parse_str(&other).unwrap()).await;
        let p = ivy.post(&format!("/sync/clients/{laptop}/primary"), &[("_csrf", &ivy.csrf().await)]).await;
        assert!(p.status == StatusCode::FORBIDDEN || p.status == StatusCode::NOT_FOUND, "{}", p.status);
    }

    async fn r_w5_timeline_pages_newest_first(s: TestServer) {
        let acc = s.post(&s.admin, "/api/v1/accounts", json!({"name": "Busy"})).await.expect(201);
        let aid = acc["id"].as_str().unwrap();
        for i in 0..30 {
            s.post(&s.admin, "/api/v1/tasks", json!({"subject": format!("Task {i:02}"), "regarding": {"set": "accounts", "id": aid}})).await.expect(201);
        }
        let b = Browser::as_admin(&s).await;
        let first = b.get(&format!("/accounts/{aid}")).await;
        let rows = |p: &Page| p.html.matches("<tr><td>").count();
        assert_eq!(rows(&first), 25);
        assert!(first.html.contains("Task 29") && !first.html.contains("Task 04"));
        let older = b.get(&first.link("next")).await;
        assert_eq!(rows(&older), 5);
        assert!(older.html.contains("Task 04") && older.html.contains("Task 00") && !older.html.contains("Task 05"));
        assert!(!older.html.contains("rel=\"next\""), "the last page");
        assert!(older.html.contains(">Newest</a>"));
    }

    async fn r_w7_admin_adds_users_and_sets_passwords(s: TestServer) {
        let admin = Browser::as_admin(&s).await;
        let page = admin.get("/admin").await;
        let csrf = page.hidden("_csrf");
        let added = admin.post("/admin/users", &[("_csrf", &csrf), ("email", "joe@example.com"), ("name", "Joe"), ("role", "user")]).await;
        assert_eq!(added.status, 200, "{}", added.html);
        assert!(added.html.contains("Added joe@example.com"));
        let token = added.html.split("<code class=\"token\">").nth(1).unwrap().split('<').next().unwrap().to_string();
        assert!(token.starts_with("crm_"), "the token is shown once: {token}");
        let me = s.get(&token, "/api/v1/contacts").await;
        assert_eq!(me.status, 200, "the token works");
        let dup = admin.post("/admin/users", &[("_csrf", &csrf), ("email", "JOE@example.com"), ("name", "Joe again")]).await;
        assert_eq!(dup.status, StatusCode::CONFLICT);
        assert!(dup.html.contains("already has this email"), "the API's message: {}", dup.html);
        let joe = crmsync_server::passwords::user_by_email(&s.store, "joe@example.com").await.unwrap().unwrap();
        let short = admin.post(&format!("/admin/users/{}/password", joe.id), &[("_csrf", &csrf), ("password", "short")]).await;
        assert_eq!(short.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(short.html.contains("at least 8"));
        let set = admin.post(&format!("/admin/users/{}/password", joe.id), &[("_csrf", &csrf), ("password", "joe's new password")]).await;
        assert_eq!(set.status, 200, "{}", set.html);
        assert_eq!(sign_in(&Browser::anonymous(&s), "joe@example.com", "joe's new password").await.status, StatusCode::SEE_OTHER);
        // A plain user may do neither; nor may a form without its token.
        let joe_b = Browser::as_user(&s, joe.id).await;
        let jcsrf = joe_b.csrf().await;
        let users_before = s.get(&s.admin, "/api/v1/users").await.expect(200)["items"].as_array().unwrap().len();
        assert_eq!(joe_b.post("/admin/users", &[("_csrf", &jcsrf), ("email", "x@example.com"), ("name", "X")]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(joe_b.post(&format!("/admin/users/{}/password", joe.id), &[("_csrf", &jcsrf), ("password", "another password")]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(admin.post_with("/admin/users", &[("email", "y@example.com"), ("name", "Y")], &[]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(s.get(&s.admin, "/api/v1/users").await.expect(200)["items"].as_array().unwrap().len(), users_before);
        assert_eq!(sign_in(&Browser::anonymous(&s), "joe@example.com", "joe's new password").await.status, StatusCode::SEE_OTHER, "the password stayed");
        // A new password ends the sessions signed in with the old one.
        assert_eq!(joe_b.get("/contacts").await.status, 200);
        admin.post(&format!("/admin/users/{}/password", joe.id), &[("_csrf", &csrf), ("password", "joe's third password")]).await;
        assert_eq!(joe_b.get("/contacts").await.status, StatusCode::SEE_OTHER);
    }

    async fn r_w5_timeline_index_is_built_for_a_database_that_had_records_before(s: TestServer) {
        let acc = s.post(&s.admin, "/api/v1/accounts", json!({"name": "Old"})).await.expect(201);
        let aid = acc["id"].as_str().unwrap();
        s.post(&s.admin, "/api/v1/tasks", json!({"subject": "From before", "regarding": {"set": "accounts", "id": aid}})).await.expect(201);
        let gone = s.post(&s.admin, "/api/v1/tasks", json!({"subject": "Deleted one", "regarding": {"set": "accounts", "id": aid}})).await.expect(201);
        s.delete(&s.admin, &format!("/api/v1/tasks/{}", gone["id"].as_str().unwrap())).await;
        let links = |store: crmsync_server::Store| async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM record_links").fetch_one(&store.pool).await.unwrap();
            n
        };
        assert_eq!(links(s.store.clone()).await, 1, "a deleted record leaves no link");
        sqlx::query("DELETE FROM record_links").execute(&s.store.pool).await.unwrap();
        // Opening the database again builds the index.
        let reopened = crmsync_server::Store::connect(&s.db.url).await.unwrap();
        assert_eq!(links(reopened).await, 1);
        let b = Browser::as_admin(&s).await;
        let page = b.get(&format!("/accounts/{aid}")).await;
        assert!(page.html.contains("From before") && !page.html.contains("Deleted one"));
    }

    async fn r_w5_tracked_email_page_shows_recipients_attachments_and_escaped_html(s: TestServer) {
        use base64::Engine;
        let (uid, ann) = s.add_user("ann@example.com").await;
        let lee = s.post(&ann, "/api/v1/contacts", json!({"last_name": "Lee", "email": "lee@example.org"})).await.expect(201);
        let client = s.register(&ann, "laptop").await["id"].as_str().unwrap().to_string();
        let raw = "Message-ID: <w1@example.org>\r\nFrom: Lee <lee@example.org>\r\nTo: ann@example.com, stranger@example.net\r\nSubject: Quote <b>now</b>\r\nDate: Tue, 24 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>Hi</p><script>alert(1)</script><img src=x onerror=alert(2)>\r\n--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"quote.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n";
        let op = json!({"op_id": "1", "kind": "track", "set": "emails", "raw": base64::engine::general_purpose::STANDARD.encode(raw)});
        let r = s.push(&ann, &client, json!([op])).await;
        assert_eq!(r[0]["status"], "ok", "{}", r[0]);
        let eid = r[0]["id"].as_str().unwrap();
        let b = Browser::as_user(&s, Uuid::parse_str(&uid).unwrap()).await;
        let page = b.get(&format!("/emails/{eid}")).await;
        assert_eq!(page.status, 200);
        assert!(page.html.contains("<li>quote.pdf</li>"), "attachment names: {}", page.html);
        assert!(page.html.contains(&format!("<a href=\"/contacts/{}\">lee@example.org</a>", lee["id"].as_str().unwrap())), "the resolved sender is linked: {}", page.html);
        assert!(page.html.contains("stranger@example.net") && !page.html.contains("href=\"/contacts/stranger"), "an unknown recipient is plain text");
        assert!(!page.html.contains("<script>") && !page.html.contains("<img") && !page.html.contains("<b>now"), "nothing of the message is markup: {}", page.html);
        assert!(page.html.contains("Quote &#60;b&#62;now&#60;/b&#62;"));
        // The contact's timeline lists it.
        assert!(b.get(&format!("/contacts/{}", lee["id"].as_str().unwrap())).await.html.contains(&format!("/emails/{eid}")));
    }

    async fn r_w7_admin_organization_settings_form(s: TestServer) {
        let admin = Browser::as_admin(&s).await;
        let form = admin.get("/admin/settings").await;
        assert_eq!(form.status, 200, "{}", form.html);
        assert!(form.html.contains("for=\"f-tracking_token_prefix\"") && form.html.contains("name=\"sync_interval\""), "{}", form.html);
        let csrf = form.hidden("_csrf");
        let saved = admin.post("/admin/settings", &[("_csrf", &csrf), ("tracking_token_prefix", "ACME"), ("smart_matching", "true"), ("exclusions", "@hr.example.com, noreply@*")]).await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.html);
        let api = s.get(&s.admin, "/api/v1/settings").await.expect(200);
        assert_eq!(api["tracking_token_prefix"], "ACME");
        assert_eq!(api["smart_matching"], true);
        assert_eq!(api["exclusions"], json!(["@hr.example.com", "noreply@*"]));
        // Refusals: core's message next to the field, nothing saved.
        let bad = admin.post("/admin/settings", &[("_csrf", &csrf), ("tracking_token_prefix", "no spaces!")]).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.html.contains("id=\"tracking_token_prefix-error\"") && bad.html.contains("1 to 16 letters or digits"), "{}", bad.html);
        assert!(bad.html.contains("value=\"no spaces!\""), "the posted value is shown again");
        let bad = admin.post("/admin/settings", &[("_csrf", &csrf), ("mass_delete_max_items", "lots")]).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.html.contains("id=\"mass_delete_max_items-error\"") && bad.html.contains("whole number"), "{}", bad.html);
        let bad = admin.post("/admin/settings", &[("_csrf", &csrf), ("sync_interval", "1m")]).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.html.contains("id=\"sync_interval-error\""), "{}", bad.html);
        // Neither a plain user nor a form without its token changes anything.
        let (id, _) = s.add_user("pam@example.com").await;
        let pam = Browser::as_user(&s, user_id(&json!(id))).await;
        assert_eq!(pam.get("/admin/settings").await.status, StatusCode::FORBIDDEN);
        let pcsrf = pam.csrf().await;
        assert_eq!(pam.post("/admin/settings", &[("_csrf", &pcsrf), ("tracking_token_prefix", "PAM")]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(admin.post_with("/admin/settings", &[("tracking_token_prefix", "CSRF")], &[]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(s.get(&s.admin, "/api/v1/settings").await.expect(200), api, "nothing changed");
    }

    async fn r_w7_admin_user_privileges_and_settings(s: TestServer) {
        let (id, _) = s.add_user("ray@example.com").await;
        let admin = Browser::as_admin(&s).await;
        let page = admin.get("/admin").await;
        assert!(page.html.contains(&format!("action=\"/admin/users/{id}/access\"")), "{}", page.html);
        let csrf = page.hidden("_csrf");
        let saved = admin.post(&format!("/admin/users/{id}/access"), &[("_csrf", &csrf), ("sync_to_mailbox", "on"), ("approved_email", "on")]).await;
        assert_eq!(saved.status, 200, "{}", saved.html);
        assert!(saved.html.contains("Saved the role and privileges of ray@example.com"));
        let ray = s.get(&s.admin, &format!("/api/v1/users/{id}")).await.expect(200);
        assert_eq!((ray["sync_to_mailbox"].clone(), ray["approved_email"].clone(), ray["go_offline"].clone()), (json!(true), json!(true), json!(false)));
        let saved = admin.post(&format!("/admin/users/{id}/access"), &[("_csrf", &csrf), ("admin", "on"), ("go_offline", "on")]).await;
        assert_eq!(saved.status, 200, "{}", saved.html);
        let ray = s.get(&s.admin, &format!("/api/v1/users/{id}")).await.expect(200);
        assert_eq!((ray["role"].clone(), ray["sync_to_mailbox"].clone(), ray["go_offline"].clone()), (json!("admin"), json!(false), json!(true)));
        // The user's settings document, as the API's PATCH takes it.
        let path = format!("/admin/users/{id}/settings");
        let form = admin.get(&path).await;
        assert_eq!(form.status, 200, "{}", form.html);
        assert!(form.html.contains("Settings of ray@example.com") && form.html.contains("name=\"auto_track\""), "{}", form.html);
        let saved = admin.post(&path, &[("_csrf", &csrf), ("schedule_interval", "30m"), ("entity_types", "contacts, tasks"), ("auto_track", "none")]).await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.html);
        let api = s.get(&s.admin, &format!("/api/v1/users/{id}/settings")).await.expect(200);
        assert_eq!((api["schedule_interval"].clone(), api["entity_types"].clone(), api["auto_track"].clone()), (json!("30m"), json!(["contacts", "tasks"]), json!("none")));
        let bad = admin.post(&path, &[("_csrf", &csrf), ("schedule_interval", "1m")]).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(bad.html.contains("id=\"schedule_interval-error\"") && bad.html.contains("organization minimum"), "{}", bad.html);
        // A plain user may do neither, and a form without its token does nothing.
        let (pid, _) = s.add_user("pam@example.com").await;
        let pam = Browser::as_user(&s, user_id(&json!(pid))).await;
        let pcsrf = pam.csrf().await;
        assert_eq!(pam.get(&path).await.status, StatusCode::FORBIDDEN);
        assert_eq!(pam.post(&path, &[("_csrf", &pcsrf), ("schedule_interval", "1h")]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(pam.post(&format!("/admin/users/{pid}/access"), &[("_csrf", &pcsrf), ("admin", "on")]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(admin.post_with(&format!("/admin/users/{id}/access"), &[], &[]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(admin.post_with(&path, &[("schedule_interval", "1h")], &[]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(s.get(&s.admin, &format!("/api/v1/users/{id}/settings")).await.expect(200), api);
        assert_eq!(s.get(&s.admin, &format!("/api/v1/users/{id}")).await.expect(200)["role"], "admin");
        assert_eq!(s.get(&s.admin, &format!("/api/v1/users/{pid}")).await.expect(200)["role"], "user");
    }

    async fn r_w7_admin_sync_field_directions(s: TestServer) {
        let admin = Browser::as_admin(&s).await;
        let sets = admin.get("/admin/sync-fields").await;
        assert!(sets.html.contains("href=\"/admin/sync-fields/contacts\""), "{}", sets.html);
        let form = admin.get("/admin/sync-fields/contacts").await;
        assert_eq!(form.status, 200, "{}", form.html);
        assert!(form.html.contains("<select id=\"f-job_title\" name=\"job_title\""), "{}", form.html);
        let csrf = form.hidden("_csrf");
        let saved = admin.post("/admin/sync-fields/contacts", &[("_csrf", &csrf), ("job_title", "to_mailbox")]).await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.html);
        let api = s.get(&s.admin, "/api/v1/sync-fields/contacts").await.expect(200);
        assert_eq!(api["fields"]["job_title"], "to_mailbox");
        let bad = admin.post("/admin/sync-fields/contacts", &[("_csrf", &csrf), ("job_title", "sideways")]).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.html);
        assert!(bad.html.contains("id=\"job_title-error\"") && bad.html.contains("must be one of"), "the API's message at the field: {}", bad.html);
        assert_eq!(admin.get("/admin/sync-fields/accounts").await.status, StatusCode::NOT_FOUND);
        let (pid, _) = s.add_user("pam@example.com").await;
        let pam = Browser::as_user(&s, user_id(&json!(pid))).await;
        let pcsrf = pam.csrf().await;
        assert_eq!(pam.get("/admin/sync-fields/contacts").await.status, StatusCode::FORBIDDEN);
        assert_eq!(pam.post("/admin/sync-fields/contacts", &[("_csrf", &pcsrf), ("job_title", "none")]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(admin.post_with("/admin/sync-fields/contacts", &[("job_title", "none")], &[]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(s.get(&s.admin, "/api/v1/sync-fields/contacts").await.expect(200), api, "nothing changed");
    }

    async fn r_w7_admin_field_security_rules(s: TestServer) {
        let admin = Browser::as_admin(&s).await;
        let page = admin.get("/admin/field-security").await;
        assert_eq!(page.status, 200, "{}", page.html);
        let csrf = page.hidden("_csrf");
        let added = admin.post("/admin/field-security", &[("_csrf", &csrf), ("entity_set", "contacts"), ("field", "job_title"), ("user_id", ""), ("can_read", "false"), ("can_update", "false")]).await;
        assert_eq!(added.status, StatusCode::SEE_OTHER, "{}", added.html);
        let rules = s.get(&s.admin, "/api/v1/field-security").await.expect(200);
        let rule = &rules["items"][0];
        assert_eq!((rule["field"].clone(), rule["can_read"].clone()), (json!("job_title"), json!(false)));
        assert!(admin.get("/admin/field-security").await.html.contains("Everyone"));
        let bad = admin.post("/admin/field-security", &[("_csrf", &csrf), ("entity_set", "contacts"), ("field", "no_such_field"), ("can_read", "true"), ("can_update", "false")]).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.html);
        assert!(bad.html.contains("Nothing was saved") && bad.html.contains("no_such_field"), "{}", bad.html);
        let dup = admin.post("/admin/field-security", &[("_csrf", &csrf), ("entity_set", "contacts"), ("field", "job_title"), ("can_read", "true"), ("can_update", "true")]).await;
        assert_eq!(dup.status, StatusCode::CONFLICT, "{}", dup.html);
        assert_eq!(s.get(&s.admin, "/api/v1/field-security").await.expect(200), rules, "refusals saved nothing");
        let (pid, _) = s.add_user("pam@example.com").await;
        let pam = Browser::as_user(&s, user_id(&json!(pid))).await;
        let pcsrf = pam.csrf().await;
        let rule_id = rule["id"].as_str().unwrap();
        assert_eq!(pam.get("/admin/field-security").await.status, StatusCode::FORBIDDEN);
        assert_eq!(pam.post(&format!("/admin/field-security/{rule_id}/delete"), &[("_csrf", &pcsrf)]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(admin.post_with(&format!("/admin/field-security/{rule_id}/delete"), &[], &[]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(s.get(&s.admin, "/api/v1/field-security").await.expect(200), rules);
        let deleted = admin.post(&format!("/admin/field-security/{rule_id}/delete"), &[("_csrf", &csrf)]).await;
        assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.html);
        assert_eq!(s.get(&s.admin, "/api/v1/field-security").await.expect(200)["items"], json!([]));
    }

    async fn r_w7_admin_sync_filter_builder(s: TestServer) {
        let admin = Browser::as_admin(&s).await;
        let before = s.get(&s.admin, "/api/v1/sync-filters").await.expect(200);
        let page = admin.get("/admin/filters").await;
        assert_eq!(page.status, 200, "{}", page.html);
        assert!(page.html.contains("name=\"field_0\"") && !page.html.contains("name=\"field_1\""));
        let csrf = page.hidden("_csrf");
        // Adding and removing rows keeps what was typed.
        let two = admin.post("/admin/filters", &[("_csrf", &csrf), ("name", "Mine"), ("entity_set", "contacts"), ("combine", "any"), ("field_0", "owner_id"), ("op_0", "eq"), ("value_0", "@me"), ("_action", "add")]).await;
        assert_eq!(two.status, 200, "{}", two.html);
        assert!(two.html.contains("name=\"field_1\"") && two.html.contains("value=\"@me\"") && two.html.contains("value=\"Mine\""), "{}", two.html);
        let one = admin.post("/admin/filters", &[("_csrf", &csrf), ("name", "Mine"), ("entity_set", "contacts"), ("combine", "any"), ("field_0", "last_name"), ("op_0", "eq"), ("value_0", "x"), ("field_1", "owner_id"), ("op_1", "eq"), ("value_1", "@me"), ("_action", "remove_0")]).await;
        assert!(!one.html.contains("name=\"field_1\"") && one.html.contains("value=\"owner_id\""), "{}", one.html);
        // Core refuses a bad condition; the message is at its row.
        let bad = admin.post("/admin/filters", &[("_csrf", &csrf), ("name", "Bad"), ("entity_set", "contacts"), ("combine", "all"), ("field_0", "owner_id"), ("op_0", "eq"), ("value_0", "@me"), ("field_1", "no_such_field"), ("op_1", "eq"), ("value_1", "x"), ("_action", "save")]).await;
        assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.html);
        assert!(bad.html.contains("id=\"condition-error-1\"") && bad.html.contains("is not a field of contacts"), "{}", bad.html);
        let bad = admin.post("/admin/filters", &[("_csrf", &csrf), ("name", ""), ("entity_set", "contacts"), ("combine", "all"), ("field_0", "owner_id"), ("op_0", "eq"), ("value_0", "@me"), ("_action", "save")]).await;
        assert!(bad.html.contains("id=\"filter-name-error\""), "{}", bad.html);
        let count = |v: &Value| v["items"].as_array().unwrap().len();
        assert_eq!(count(&s.get(&s.admin, "/api/v1/sync-filters").await.expect(200)), count(&before), "refusals saved nothing");
        let saved = admin.post("/admin/filters", &[("_csrf", &csrf), ("name", "Mine or open"), ("entity_set", "contacts"), ("combine", "any"), ("field_0", "owner_id"), ("op_0", "eq"), ("value_0", "@me"), ("field_1", "state"), ("op_1", "in"), ("value_1", "active, inactive"), ("_action", "save")]).await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.html);
        let filters = s.get(&s.admin, "/api/v1/sync-filters").await.expect(200);
        let f = filters["items"].as_array().unwrap().iter().find(|f| f["name"] == "Mine or open").expect("saved");
        assert_eq!(f["scope"], "system");
        assert_eq!(f["condition"], json!({"any": [{"field": "owner_id", "op": "eq", "value": "@me"}, {"field": "state", "op": "in", "value": ["active", "inactive"]}]}));
        assert!(admin.get("/admin/filters").await.html.contains("Mine or open"));
        let fid = f["id"].as_str().unwrap();
        let (pid, _) = s.add_user("pam@example.com").await;
        let pam = Browser::as_user(&s, user_id(&json!(pid))).await;
        let pcsrf = pam.csrf().await;
        assert_eq!(pam.get("/admin/filters").await.status, StatusCode::FORBIDDEN);
        assert_eq!(pam.post("/admin/filters", &[("_csrf", &pcsrf), ("name", "P"), ("entity_set", "contacts"), ("field_0", "owner_id"), ("op_0", "eq"), ("value_0", "@me")]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(pam.post(&format!("/admin/filters/{fid}/delete"), &[("_csrf", &pcsrf)]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(admin.post_with(&format!("/admin/filters/{fid}/delete"), &[], &[]).await.status, StatusCode::FORBIDDEN);
        assert_eq!(s.get(&s.admin, "/api/v1/sync-filters").await.expect(200), filters, "nothing changed");
        let deleted = admin.post(&format!("/admin/filters/{fid}/delete"), &[("_csrf", &csrf)]).await;
        assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.html);
        assert_eq!(count(&s.get(&s.admin, "/api/v1/sync-filters").await.expect(200)), count(&before));
    }

    async fn r_o1_admin_page_shows_and_edits_offline_filters(s: TestServer) {
        let admin = Browser::as_admin(&s).await;
        let page = admin.get("/admin/offline-filters").await;
        assert_eq!(page.status, 200, "{}", page.html);
        // The defaults are listed, and every set but users can be chosen.
        let defaults = s.get(&s.admin, "/api/v1/offline-filters").await.expect(200);
        let first = defaults["items"][0]["name"].as_str().unwrap().to_string();
        assert!(page.html.contains(&first), "{}", page.html);
        assert!(page.html.contains("value=\"opportunities\"") && !page.html.contains("value=\"users\""), "{}", page.html);
        assert!(page.html.contains("action=\"/admin/offline-filters\""));
        let csrf = page.hidden("_csrf");
        let saved = admin.post("/admin/offline-filters", &[("_csrf", &csrf), ("name", "Open opportunities"), ("entity_set", "opportunities"), ("combine", "all"), ("field_0", "state"), ("op_0", "eq"), ("value_0", "open"), ("_action", "save")]).await;
        assert_eq!(saved.status, StatusCode::SEE_OTHER, "{}", saved.html);
        let filters = s.get(&s.admin, "/api/v1/offline-filters").await.expect(200);
        let f = filters["items"].as_array().unwrap().iter().find(|f| f["name"] == "Open opportunities").expect("saved as an offline filter");
        assert_eq!(f["entity_set"], "opportunities");
        let sync = s.get(&s.admin, "/api/v1/sync-filters").await.expect(200);
        assert!(sync["items"].as_array().unwrap().iter().all(|f| f["name"] != "Open opportunities"), "not a sync filter");
        let fid = f["id"].as_str().unwrap();
        let (pid, _) = s.add_user("pam@example.com").await;
        let pam = Browser::as_user(&s, user_id(&json!(pid))).await;
        assert_eq!(pam.get("/admin/offline-filters").await.status, StatusCode::FORBIDDEN);
        let deleted = admin.post(&format!("/admin/offline-filters/{fid}/delete"), &[("_csrf", &csrf)]).await;
        assert_eq!(deleted.status, StatusCode::SEE_OTHER, "{}", deleted.html);
        assert!(!admin.get("/admin/offline-filters").await.html.contains("Open opportunities"));
    }

    async fn r_w1_unknown_web_paths_answer_the_web_not_found_page(s: TestServer) {
        let b = Browser::as_admin(&s).await;
        for path in ["/contacts/x/y", "/nowhere", "/admin/nothing"] {
            let p = b.get(path).await;
            assert_eq!(p.status, StatusCode::NOT_FOUND, "{path}");
            assert!(p.headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/html"), "{path}");
            assert!(p.html.contains("There is no such page"), "{path}: {}", p.html);
            assert_security_headers(&p, path);
        }
        // Under /api/ it stays the API's JSON.
        let api = s.http.get(format!("{}/api/nowhere", s.base)).send().await.unwrap();
        assert_eq!(api.status(), 404);
        assert!(api.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    }

    async fn r_w6_sync_page_lists_the_items_a_client_cannot_read_with_the_fix(s: TestServer) {
        let (uid, token) = s.add_user("kim@example.com").await;
        let desk = s.register(&token, "desk").await;
        let desk = desk["id"].as_str().unwrap().to_string();
        let path = format!("/api/v1/sync/clients/{desk}/problems");
        let b = Browser::as_user(&s, Uuid::parse_str(&uid).unwrap()).await;
        assert!(b.get("/sync").await.html.contains("Your clients can read every item"));
        let hostile = "contacts/<script>x</script>.vcf";
        s.call(&token, reqwest::Method::PUT, &path, Some(json!({"items": [{"item": hostile, "problem": "cannot be read (no END:VCARD); fix or remove the item"}]}))).await.expect(200);
        let page = b.get("/sync").await.html;
        assert!(page.contains("contacts/&#60;script&#62;x&#60;/script&#62;.vcf") || page.contains("contacts/&lt;script&gt;x&lt;/script&gt;.vcf"), "escaped: {page}");
        assert!(!page.contains("<script>x"), "{page}");
        assert!(page.contains("fix or remove the item"), "{page}");
        // Refused: another user's client, a malformed list, too many items.
        let (_, other) = s.add_user("lee@example.com").await;
        let refused = s.call(&other, reqwest::Method::PUT, &path, Some(json!({"items": []}))).await;
        assert!(matches!(refused.status.as_u16(), 403 | 404), "{}", refused.status);
        assert_eq!(s.call(&token, reqwest::Method::PUT, &path, Some(json!({"items": [{"item": "x"}]}))).await.status.as_u16(), 422);
        let many: Vec<Value> = (0..1001).map(|i| json!({"item": format!("i{i}"), "problem": "p"})).collect();
        assert_eq!(s.call(&token, reqwest::Method::PUT, &path, Some(json!({"items": many}))).await.status.as_u16(), 422);
        assert!(b.get("/sync").await.html.contains("fix or remove the item"), "refusals change nothing");
        // An empty list clears them.
        s.call(&token, reqwest::Method::PUT, &path, Some(json!({"items": []}))).await.expect(200);
        assert!(b.get("/sync").await.html.contains("Your clients can read every item"));
    }

    async fn r_w6_sync_page_connects_and_reconnects_a_mailbox_on_the_server(s: TestServer) {
        let (uid, token) = s.add_user("kim@example.com").await;
        let b = Browser::as_user(&s, Uuid::parse_str(&uid).unwrap()).await;
        let page = b.get("/sync").await;
        assert!(page.html.contains("No mailbox is connected to the server"), "{}", page.html);
        let csrf = b.csrf().await;
        let refused = b.post("/sync/mailboxes", &[("_csrf", &csrf), ("name", "work")]).await;
        assert_eq!(refused.status, 422);
        assert!(refused.html.contains("Fill in a mail server"), "{}", refused.html);
        let secret = "Imap-Pa55-word";
        let connected = b.post("/sync/mailboxes", &[("_csrf", &csrf), ("name", "work"), ("imap_host", "127.0.0.1"),
            ("imap_port", "143"), ("imap_security", "none"), ("imap_username", "kim"), ("imap_password", secret)]).await;
        assert_eq!(connected.status, 200, "{}", connected.html);
        assert!(connected.html.contains("Connected work"), "{}", connected.html);
        assert!(connected.html.contains("Synchronized on schedule"), "{}", connected.html);
        assert!(!connected.html.contains(secret), "no password on the page");
        // The API sees the same mailbox.
        let listed = s.get(&token, "/api/v1/mailboxes").await.expect(200);
        let id = listed["items"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(listed["items"][0]["imap"]["port"], 143);
        // A refused password, then Reconnect: active again.
        sqlx::query("UPDATE mailboxes SET state = 'needs_reconnect' WHERE id = $1").bind(&id).execute(&s.store.pool).await.unwrap();
        assert!(b.get("/sync").await.html.contains("The password was refused: use Reconnect"));
        let empty = b.post(&format!("/sync/mailboxes/{id}/reconnect"), &[("_csrf", &csrf), ("imap_password", "")]).await;
        assert_eq!(empty.status, 422);
        let fixed = b.post(&format!("/sync/mailboxes/{id}/reconnect"), &[("_csrf", &csrf), ("imap_password", "new-Pa55")]).await;
        assert_eq!(fixed.status, 200, "{}", fixed.html);
        assert!(fixed.html.contains("Synchronized on schedule"), "{}", fixed.html);
        assert_eq!(s.get(&token, &format!("/api/v1/mailboxes/{id}")).await.expect(200)["state"], "active");
        let queued = b.post(&format!("/sync/mailboxes/{id}/sync"), &[("_csrf", &csrf)]).await;
        assert!(queued.html.contains("Queued"), "{}", queued.html);
        // Without a CSRF token nothing changes; another user's mailbox is refused.
        let forged = b.post(&format!("/sync/mailboxes/{id}/reconnect"), &[("imap_password", "x")]).await;
        assert_eq!(forged.status, 403);
        let (lee, _) = s.add_user("lee@example.com").await;
        let other = Browser::as_user(&s, Uuid::parse_str(&lee).unwrap()).await;
        let other_csrf = other.csrf().await;
        let theirs = other.post(&format!("/sync/mailboxes/{id}/reconnect"), &[("_csrf", &other_csrf), ("imap_password", "x")]).await;
        assert_eq!(theirs.status, 403, "{}", theirs.html);
        let refused = other.post(&format!("/sync/mailboxes/{id}/disconnect"), &[("_csrf", &other_csrf)]).await;
        assert_eq!(refused.status, 403);
        // Disconnect: gone from the page and the API.
        let gone = b.post(&format!("/sync/mailboxes/{id}/disconnect"), &[("_csrf", &csrf)]).await;
        assert!(gone.html.contains("Disconnected"), "{}", gone.html);
        assert!(gone.html.contains("No mailbox is connected to the server"), "{}", gone.html);
        assert_eq!(s.get(&token, &format!("/api/v1/mailboxes/{id}")).await.status, 404);
    }

    async fn r_w6_sync_page_shows_each_clients_last_synchronization_and_result(s: TestServer) {
        let (uid, token) = s.add_user("kim@example.com").await;
        let desk = s.register(&token, "desk").await;
        let desk = desk["id"].as_str().unwrap().to_string();
        s.register(&token, "phone").await;
        let b = Browser::as_user(&s, Uuid::parse_str(&uid).unwrap()).await;
        let row = |html: &str, name: &str| html.split(&format!("<th scope=\"row\">{name}</th>")).nth(1).unwrap().split("</tr>").next().unwrap().to_string();
        let page = b.get("/sync").await;
        assert!(row(&page.html, "desk").contains("<td>Never</td><td>Not synchronized yet</td>"), "{}", page.html);
        for name in ["One", "Two", "Three"] {
            s.post(&token, "/api/v1/contacts", json!({"last_name": name})).await.expect(201);
        }
        // Delivered but not yet confirmed.
        let (batch, items) = s.prepare_and_fetch(&token, &desk).await;
        let unconfirmed = row(&b.get("/sync").await.html, "desk");
        assert!(unconfirmed.contains("not yet confirmed"), "{unconfirmed}");
        let acks: Vec<Value> = items.iter().map(|d| json!({"id": d.id, "version": d.version})).collect();
        s.post(&token, "/api/v1/sync/ack", json!({"client_id": desk, "batch": batch.unwrap(), "items": acks})).await.expect(200);
        let clients = s.get(&token, "/api/v1/sync/clients").await.expect(200);
        let api = clients.as_array().or(clients["items"].as_array()).unwrap().iter().find(|c| c["name"] == "desk").unwrap().clone();
        let at = api["last_sync_at"].as_str().expect("the API has the time too").to_string();
        assert_eq!(api["last_ack_items"], json!(items.len()));
        let done = row(&b.get("/sync").await.html, "desk");
        assert!(done.contains(&format!("<td>{at}</td><td>Confirmed: {} change(s) from the CRM applied in the mailbox</td>", items.len())), "{done}");
        // A later sync with nothing new says so (an idle sync records its
        // time at most once a minute: the last one is made older here).
        let old = "2000-01-01T00:00:00.000000Z";
        sqlx::query("UPDATE sync_clients SET last_sync_at = $1, last_batch_at = $1, last_ack_at = $1 WHERE id = $2")
            .bind(old).bind(&desk).execute(&s.store.pool).await.unwrap();
        assert!(s.sync_once(&token, &desk).await.is_empty());
        let page = b.get("/sync").await;
        assert!(!row(&page.html, "desk").contains(old), "the idle sync's time is recorded");
        assert!(row(&page.html, "desk").contains("Nothing new from the CRM"), "{}", page.html);
        assert!(row(&page.html, "phone").contains("Not synchronized yet"));
    }
}
