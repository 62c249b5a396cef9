//! DAV benchmark (issue 17 §7, BENCHMARKS.md "DAV initial sync" and "DAV
//! no-change sync"): the real `crmsync` binary, a CRM (`crmsync serve` on a
//! temporary SQLite database) holding N contacts + N appointments + N to-dos,
//! and a real DAV server on loopback (Radicale, Xandikos: the fixture of
//! crates/dav/tests/common, from the venv of `scripts/dav-servers.sh`).
//!
//! Per server and size N, each run uploads the same 3N items into three
//! fresh, empty collections of that server, once per variant:
//!
//! - `crmsync`: a whole `crmsync sync` process with `[mailbox.dav]` pointed
//!   at the collections (a new client each time: registration, prepare,
//!   rendering, PUTs, acknowledgements); its wall time and its own CPU time
//!   (wait4's rusage of that process: not the CRM's, not the DAV server's);
//! - `floor`: a bare client that only PUTs the same bytes (`If-None-Match:
//!   *`, one keep-alive connection, one item at a time like the agent);
//! - `vdirsyncer`: `vdirsyncer sync` of a folder holding the same files to
//!   the collections (its `discover` is run before and not timed).
//!
//! "The same bytes" are what crmsync wrote in an untimed warm-up sync, read
//! back from the server. The variants are interleaved, their order rotating
//! from run to run; medians and ratios of medians are reported.
//!
//! Then the no-change sync, on the warm-up collections: `crmsync sync`
//! processes through a proxy that records every HTTP request they send to
//! the DAV server, beside the server's own no-change sync-collection REPORT
//! (one per collection, sent by a bare client), alternated 7 times; and the
//! DAV backend alone (`changes_since` per collection, in this process).
//!
//!   cargo bench -p crmsync --bench dav -- [--sizes 100,300] [--runs 3]
//!       [--servers radicale,xandikos] [--no-vdirsyncer]
//!
//! Defaults: sizes 5, 1 run, both servers: a seconds-long smoke run.

mod common;
#[path = "../../dav/tests/common/mod.rs"]
mod dav;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{arg_list, dav_config, median, sync_process};
use crmsync_dav::{DavConfig, DavMailbox, Url};
use crmsync_mailbox::Mailbox;
use dav::{Kind, PASSWORD, USER};
use support::BIN;

const IDS: [&str; 3] = ["contacts", "calendar", "tasks"];

/// One item as crmsync wrote it: collection index (into [`IDS`]), the last
/// segment of its href, its bytes.
struct Sample {
    collection: usize,
    name: String,
    data: Vec<u8>,
}

/// Three fresh, empty collections named after `tag`: (contacts, calendar,
/// tasks) URLs.
async fn fresh_collections(server: &dav::Server, tag: &str) -> [Url; 3] {
    let cal = |comp: &str| {
        format!(
            r#"<?xml version="1.0"?><D:mkcol xmlns:D="DAV:" xmlns:C="urn:ietf:params:xml:ns:caldav"><D:set><D:prop><D:resourcetype><D:collection/><C:calendar/></D:resourcetype><C:supported-calendar-component-set><C:comp name="{comp}"/></C:supported-calendar-component-set></D:prop></D:set></D:mkcol>"#
        )
    };
    let book = r#"<?xml version="1.0"?><D:mkcol xmlns:D="DAV:" xmlns:A="urn:ietf:params:xml:ns:carddav"><D:set><D:prop><D:resourcetype><D:collection/><A:addressbook/></D:resourcetype></D:prop></D:set></D:mkcol>"#.to_owned();
    let (ab, cals) = match server.kind {
        Kind::Radicale => (format!("/{USER}/"), format!("/{USER}/")),
        Kind::Xandikos => ("/user/contacts/".to_owned(), "/user/calendars/".to_owned()),
        Kind::Cyrus => (
            format!("/dav/addressbooks/user/{USER}/"),
            format!("/dav/calendars/user/{USER}/"),
        ),
    };
    let urls = [
        (format!("{ab}{tag}-contacts/"), book),
        (format!("{cals}{tag}-calendar/"), cal("VEVENT")),
        (format!("{cals}{tag}-tasks/"), cal("VTODO")),
    ]
    .map(|(path, body)| (server.root().join(&path).unwrap(), body));
    let mut out = Vec::new();
    for (url, body) in urls {
        let (status, answer) = server
            .raw(
                "MKCOL",
                url.clone(),
                &[],
                Some(("application/xml", body.into_bytes())),
            )
            .await
            .unwrap();
        assert_eq!(
            status,
            201,
            "MKCOL {url}: {}",
            String::from_utf8_lossy(&answer)
        );
        out.push(url);
    }
    out.try_into().unwrap()
}

fn mailbox_for(urls: &[Url; 3]) -> DavMailbox {
    let mut c = DavConfig::new(USER, PASSWORD);
    c.contacts = Some(urls[0].clone());
    c.calendar = Some(urls[1].clone());
    c.tasks = Some(urls[2].clone());
    DavMailbox::new(&c).unwrap()
}

/// A `crmsync sync` writing 3N new items: (wall, its CPU time).
fn run_crmsync(config: &Path, n: usize) -> (Duration, Duration) {
    let r = sync_process(BIN, config);
    assert_eq!(
        r.report["written_to_mailbox"].as_u64(),
        Some(3 * n as u64),
        "{}",
        r.report
    );
    assert!(
        r.report["errors"].as_array().is_none_or(|e| e.is_empty()),
        "{}",
        r.report
    );
    (r.wall, r.cpu)
}

/// Every item of the collections, as stored.
async fn read_back(urls: &[Url; 3]) -> Vec<Sample> {
    let mb = mailbox_for(urls);
    let mut out = Vec::new();
    for (k, id) in IDS.iter().enumerate() {
        let changes = mb.changes_since(id, None).await.unwrap();
        let hrefs: Vec<String> = changes.changed.iter().map(|r| r.href.clone()).collect();
        for (href, item) in mb.get_many(id, &hrefs).await.unwrap() {
            out.push(Sample {
                collection: k,
                name: href
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .into(),
                data: item.unwrap().data,
            });
        }
    }
    out
}

/// The floor: only the PUTs of the same bytes.
async fn run_floor(http: &reqwest::Client, urls: &[Url; 3], items: &[Sample]) -> Duration {
    let t = Instant::now();
    for s in items {
        let ct = if s.collection == 0 {
            "text/vcard; charset=utf-8"
        } else {
            "text/calendar; charset=utf-8"
        };
        let url = urls[s.collection].join(&format!("./{}", s.name)).unwrap();
        let resp = http
            .put(url)
            .basic_auth(USER, Some(PASSWORD))
            .header("If-None-Match", "*")
            .header("Content-Type", ct)
            .body(s.data.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let _ = resp.bytes().await;
        assert!(status.is_success(), "floor PUT: {status}");
    }
    t.elapsed()
}

/// vdirsyncer: folder → the fresh collections. Returns the wall time of
/// `vdirsyncer sync` (discover run before, untimed).
fn run_vdirsyncer(work: &Path, urls: &[Url; 3], items: &[Sample]) -> Duration {
    let mut config = format!(
        "[general]\nstatus_path = \"{}/\"\n",
        work.join("status").display()
    );
    for (i, id) in IDS.iter().enumerate() {
        let folder = work.join(id);
        std::fs::create_dir_all(&folder).unwrap();
        let (ext, kind) = if i == 0 {
            (".vcf", "carddav")
        } else {
            (".ics", "caldav")
        };
        for (k, s) in items.iter().filter(|s| s.collection == i).enumerate() {
            std::fs::write(folder.join(format!("{k}{ext}")), &s.data).unwrap();
        }
        config.push_str(&format!(
            "\n[pair {id}]\na = \"{id}_local\"\nb = \"{id}_remote\"\ncollections = null\n\n[storage {id}_local]\ntype = \"filesystem\"\npath = \"{}/\"\nfileext = \"{ext}\"\n\n[storage {id}_remote]\ntype = \"{kind}\"\nurl = \"{}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
            folder.display(),
            urls[i]
        ));
    }
    let cfg = work.join("config");
    std::fs::write(&cfg, config).unwrap();
    let vdirsyncer = |command: &str| {
        let out = std::process::Command::new(dav::venv().join("bin/vdirsyncer"))
            .arg("-c")
            .arg(&cfg)
            .arg(command)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vdirsyncer {command}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    vdirsyncer("discover");
    let t = Instant::now();
    vdirsyncer("sync");
    t.elapsed()
}

/// Counts the items a collection holds (a Depth 1 PROPFIND).
async fn count_items(server: &dav::Server, url: &Url) -> usize {
    let (status, body) = server
        .raw("PROPFIND", url.clone(), &[("Depth", "1")], None)
        .await
        .unwrap();
    assert_eq!(status, 207);
    crmsync_dav::xml::parse_multistatus(&body)
        .unwrap()
        .responses
        .len()
        - 1
}

/// The request line of an HTTP request, without its version. A request
/// line may follow the previous request's body on the same line (a body
/// need not end with a newline): the method is the upper-case tail of what
/// comes before the path.
fn http_request(line: &str) -> Option<String> {
    let line = line.strip_suffix(" HTTP/1.1\r\n")?;
    let (before, path) = line.rsplit_once(' ')?;
    let start = before
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_uppercase())
        .last()?
        .0;
    Some(format!("{} {path}", &before[start..]))
}

/// The collections' URLs with the port of a proxy in front of the server.
fn via(urls: &[Url; 3], port: u16) -> [Url; 3] {
    urls.clone().map(|mut u| {
        u.set_port(Some(port)).unwrap();
        u
    })
}

/// Figures of one size on one server.
#[derive(Default)]
struct Figures {
    wall: [Vec<f64>; 3],
    cpu_per_item_us: Vec<f64>,
}

async fn one_size(server: &dav::Server, n: usize, runs: usize, variants: &[usize]) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let crm = support::Server::start(dir.path()).await;
    let (seeding, contact) = common::seed_crm(&crm.base, &crm.token, n).await;
    // Roaming: every client of the user acts as primary, so each run's new
    // client writes every item (a second client would be secondary).
    let me = crm
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/contacts/{contact}"),
            None,
        )
        .await["owner_id"]
        .as_str()
        .unwrap()
        .to_owned();
    crm.call(
        reqwest::Method::PATCH,
        &format!("/api/v1/users/{me}/settings"),
        Some(serde_json::json!({"roaming": true})),
    )
    .await;
    let total = 3 * n;
    println!(
        "-- {:?}, {n} contacts + {n} appointments + {n} to-dos = {total} items (CRM seeded in {:.1} s)",
        server.kind,
        seeding.as_secs_f64()
    );
    // Warm-up: crmsync's own items (the bytes every variant uploads), and
    // the collections of the no-change syncs, through a counting proxy.
    let (proxy, seen) = common::counting_proxy(server.port, http_request).await;
    let warm = fresh_collections(server, &format!("w{n}")).await;
    let warm_config = dav_config(
        dir.path(),
        &crm,
        &format!("w{n}"),
        &via(&warm, proxy),
        USER,
        PASSWORD,
    );
    let (t, _) = run_crmsync(&warm_config, n);
    let first_sync_requests = seen.lock().unwrap().len();
    let items = read_back(&warm).await;
    assert_eq!(items.len(), total);
    println!(
        "   warm-up crmsync sync {:.2} s, {first_sync_requests} DAV requests; item sizes {}-{} bytes",
        t.as_secs_f64(),
        items.iter().map(|s| s.data.len()).min().unwrap(),
        items.iter().map(|s| s.data.len()).max().unwrap()
    );

    let http = reqwest::Client::new();
    let mut f = Figures::default();
    for run in 0..runs {
        let mut order = variants.to_vec();
        let k = run % order.len();
        order.rotate_left(k);
        for v in order {
            let tag = format!("r{run}v{v}n{n}");
            let urls = fresh_collections(server, &tag).await;
            let secs = match v {
                0 => {
                    let config = dav_config(dir.path(), &crm, &tag, &urls, USER, PASSWORD);
                    let (wall, cpu) = run_crmsync(&config, n);
                    f.cpu_per_item_us
                        .push(cpu.as_secs_f64() * 1e6 / total as f64);
                    wall
                }
                1 => run_floor(&http, &urls, &items).await,
                _ => {
                    let work = tempfile::tempdir().unwrap();
                    run_vdirsyncer(work.path(), &urls, &items)
                }
            };
            for url in &urls {
                assert_eq!(count_items(server, url).await, n, "{url}");
            }
            let name = ["crmsync", "floor", "vdirsyncer"][v];
            println!(
                "   run {run} {name:>10}: {:>8.2} s  {:>6.1} items/s",
                secs.as_secs_f64(),
                total as f64 / secs.as_secs_f64()
            );
            f.wall[v].push(secs.as_secs_f64());
        }
    }
    let m: Vec<f64> = f.wall.iter().map(|w| median(w.clone())).collect();
    println!("   initial sync, median of {runs}:");
    println!(
        "     crmsync sync {:>8.2} s   CPU of the crmsync process per item: median {:.0} µs (runs {:?})",
        m[0],
        median(f.cpu_per_item_us.clone()),
        f.cpu_per_item_us
            .iter()
            .map(|c| c.round())
            .collect::<Vec<_>>()
    );
    if !f.wall[1].is_empty() {
        println!(
            "     floor (PUT)  {:>8.2} s   crmsync/floor = {:.3}",
            m[1],
            m[0] / m[1]
        );
    }
    if !f.wall[2].is_empty() {
        println!(
            "     vdirsyncer   {:>8.2} s   crmsync/vdirsyncer = {:.3}",
            m[2],
            m[0] / m[2]
        );
    }

    // No-change syncs: the whole process (through the proxy) alternated
    // with the server's own no-change REPORTs (direct).
    let states: Vec<crmsync_mailbox::SyncState> = {
        let mb = mailbox_for(&warm);
        let mut s = Vec::new();
        for id in IDS {
            s.push(mb.changes_since(id, None).await.unwrap().state);
        }
        s
    };
    let mut process = Vec::new();
    let mut engine = Vec::new();
    let mut report = Vec::new();
    let mut backend = Vec::new();
    let mut requests = Vec::new();
    let mb = mailbox_for(&warm);
    for _ in 0..7 {
        seen.lock().unwrap().clear();
        let r = sync_process(BIN, &warm_config);
        assert_eq!(r.report["written_to_mailbox"], 0, "{}", r.report);
        process.push(r.wall.as_secs_f64() * 1e3);
        engine.push(r.report["elapsed_ms"].as_f64().unwrap());
        requests = seen.lock().unwrap().clone();
        let t0 = Instant::now();
        for (url, state) in warm.iter().zip(&states) {
            let json: serde_json::Value = serde_json::from_str(state.as_str()).unwrap();
            let token = json["token"].as_str().unwrap().to_owned();
            let resp = http
                .request(reqwest::Method::from_bytes(b"REPORT").unwrap(), url.clone())
                .basic_auth(USER, Some(PASSWORD))
                .header("Depth", "1")
                .header("Content-Type", "application/xml; charset=utf-8")
                .body(crmsync_dav::xml::sync_collection(&token))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 207);
            let _ = resp.bytes().await.unwrap();
        }
        report.push(t0.elapsed().as_secs_f64() * 1e3);
        let t0 = Instant::now();
        for (id, state) in IDS.iter().zip(&states) {
            let c = mb.changes_since(id, Some(state)).await.unwrap();
            assert!(c.is_empty(), "{c:?}");
        }
        backend.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (p, e, r, b) = (
        median(process),
        median(engine),
        median(report),
        median(backend),
    );
    println!(
        "   no-change sync, median of 7: crmsync sync process {p:.1} ms (engine {e:.1} ms); DAV backend alone {b:.1} ms; bare sync-collection REPORTs {r:.1} ms; backend/REPORT {:.2}, engine/REPORT {:.2}",
        b / r,
        e / r
    );
    println!(
        "   DAV requests of one no-change crmsync sync ({}): {}",
        requests.len(),
        requests.join(", ")
    );
    f
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let sizes = arg_list("--sizes", &[5]);
    let runs = arg_list("--runs", &[1])[0];
    let argv: Vec<String> = std::env::args().collect();
    let servers: Vec<Kind> = argv
        .iter()
        .position(|a| a == "--servers")
        .and_then(|i| argv.get(i + 1))
        .map(|v| v.as_str())
        .unwrap_or("radicale,xandikos")
        .split(',')
        .map(|s| match s {
            "radicale" => Kind::Radicale,
            "xandikos" => Kind::Xandikos,
            other => panic!("--servers {other}: use radicale and/or xandikos"),
        })
        .collect();
    let variants: &[usize] = if argv.iter().any(|a| a == "--no-vdirsyncer") {
        &[0, 1]
    } else {
        &[0, 1, 2]
    };
    println!("DAV benchmark: sizes {sizes:?} per kind, {runs} interleaved run(s) per size");
    for kind in servers {
        let server = dav::Server::start(kind).await;
        let mut cpu = Vec::new();
        for &n in &sizes {
            let f = one_size(&server, n, runs, variants).await;
            cpu.push((n, median(f.cpu_per_item_us)));
        }
        println!(
            "{kind:?}: CPU of the crmsync process per item: {}",
            cpu.iter()
                .map(|(n, c)| format!("{:.0} µs at {} items", c, 3 * n))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
