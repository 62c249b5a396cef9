//! DAV benchmark (issue 5, BENCHMARKS.md "DAV initial sync" and "DAV
//! no-change sync"), against a real server on loopback (Radicale by
//! default) started from the venv of `scripts/dav-servers.sh`.
//!
//! Per run, each variant uploads the same N vCards + N VEVENTs + N VTODOs
//! into three fresh collections of the same server, one item at a time
//! (concurrency 1: the agent's engine writes items one by one):
//!
//! - `crmsync`: through [`DavMailbox`] as the agent's initial sync does it:
//!   `changes_since` (empty) per collection, `create` per item
//!   (`If-None-Match: *`), then the settling `changes_since` per collection;
//! - `floor`: a minimal client that only PUTs the same bytes
//!   (`If-None-Match: *`, same HTTP stack, same connection reuse);
//! - `vdirsyncer`: `vdirsyncer sync` of a folder holding the same files to
//!   the fresh collections (its `discover` is run before and not timed).
//!
//! The variants are interleaved (their order rotates from run to run) and
//! ratios of medians are reported. crmsync's own CPU time (getrusage of
//! this process, RUSAGE_SELF: the server is a child process) is reported per
//! item. Then the no-change sync: `changes_since` per collection from the
//! stored state (requests counted with `DavMailbox::request_count`) beside
//! the server's own no-change sync-collection REPORT sent by a bare client,
//! interleaved, medians of R × 7 of each.
//!
//!   cargo bench -p crmsync-dav --bench initial_sync -- [--items N] [--runs R]
//!       [--server radicale|xandikos] [--only-crmsync | --no-vdirsyncer]
//!
//! N per kind (default 20: a seconds-long smoke run), R runs (default 1).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Kind, Server, PASSWORD, USER};
use crmsync_dav::{DavConfig, DavMailbox, Url};
use crmsync_mailbox::{Mailbox, SyncState};

fn arg(name: &str) -> Option<String> {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .cloned()
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// CPU time (user + system) of this process so far.
fn cpu_self() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One item to upload: collection id, file name (= UID), bytes.
struct Sample {
    collection: &'static str,
    name: String,
    data: Vec<u8>,
}

/// Items shaped like the agent's output (vCard 4.0, VEVENT, VTODO with
/// `X-CRM-ID` and the `Tracked to CRM` category), about 400-600 bytes.
fn samples(n: usize) -> Vec<Sample> {
    let mut out = Vec::with_capacity(3 * n);
    for i in 0..n {
        let id = format!("0b9f3c1e-8f6a-4c1e-9d2a-{i:012}");
        out.push(Sample {
            collection: "contacts",
            name: format!("c-{id}"),
            data: format!(
                "BEGIN:VCARD\r\nVERSION:4.0\r\nPRODID:-//crmsync//EN\r\nUID:c-{id}\r\nFN:Person {i} Example\r\nN:Example{i};Person;;;\r\nEMAIL:person{i}@example.com\r\nTEL;TYPE=work:+47 2200 {i:04}\r\nORG:Company {i}\r\nTITLE:Buyer\r\nADR;TYPE=work:;;Street {i};Oslo;;0150;Norway\r\nCATEGORIES:Tracked to CRM\r\nX-CRM-ID:{id}\r\nEND:VCARD\r\n"
            )
            .into_bytes(),
        });
        let day = 1 + i % 28;
        let hour = 8 + i % 9;
        out.push(Sample {
            collection: "calendar",
            name: format!("e-{id}"),
            data: format!(
                "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//crmsync//EN\r\nBEGIN:VEVENT\r\nUID:e-{id}\r\nDTSTAMP:20261125T090000Z\r\nDTSTART:202706{day:02}T{hour:02}0000Z\r\nDTEND:202706{day:02}T{:02}0000Z\r\nSUMMARY:Meeting {i}\r\nLOCATION:Room {}\r\nDESCRIPTION:Agenda of meeting {i}\r\nCATEGORIES:Tracked to CRM\r\nX-CRM-ID:{id}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
                hour + 1,
                i % 10
            )
            .into_bytes(),
        });
        out.push(Sample {
            collection: "tasks",
            name: format!("t-{id}"),
            data: format!(
                "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//crmsync//EN\r\nBEGIN:VTODO\r\nUID:t-{id}\r\nDTSTAMP:20261125T090000Z\r\nDUE:202707{day:02}T170000Z\r\nSUMMARY:Task {i}\r\nPRIORITY:5\r\nSTATUS:NEEDS-ACTION\r\nCATEGORIES:Tracked to CRM\r\nX-CRM-ID:{id}\r\nX-CRM-ENTITY:tasks\r\nEND:VTODO\r\nEND:VCALENDAR\r\n"
            )
            .into_bytes(),
        });
    }
    // Grouped per collection, as the agent's deliveries come per set.
    out.sort_by_key(|s| match s.collection {
        "contacts" => 0,
        "calendar" => 1,
        _ => 2,
    });
    out
}

/// Three fresh, empty collections named after `tag`: (contacts, calendar,
/// tasks) URLs.
async fn fresh_collections(server: &Server, tag: &str) -> [Url; 3] {
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

const IDS: [&str; 3] = ["contacts", "calendar", "tasks"];

/// crmsync's initial sync of the samples: (wall, CPU, states after).
async fn run_crmsync(urls: &[Url; 3], items: &[Sample]) -> (Duration, Duration, Vec<SyncState>) {
    let mb = mailbox_for(urls);
    let cpu = cpu_self();
    let t = Instant::now();
    let mut states = Vec::new();
    for id in IDS {
        let c = mb.changes_since(id, None).await.unwrap();
        assert!(c.changed.is_empty());
        states.push(c.state);
    }
    for s in items {
        mb.create(s.collection, &s.name, &s.data).await.unwrap();
    }
    // The settling scan that steps over the agent's own writes.
    let mut after = Vec::new();
    for (id, state) in IDS.iter().zip(&states) {
        let c = mb.changes_since(id, Some(state)).await.unwrap();
        after.push(c.state);
    }
    (t.elapsed(), cpu_self() - cpu, after)
}

/// The floor: only the PUTs of the same bytes.
async fn run_floor(http: &reqwest::Client, urls: &[Url; 3], items: &[Sample]) -> Duration {
    let t = Instant::now();
    for s in items {
        let (base, ct) = match s.collection {
            "contacts" => (&urls[0], "text/vcard; charset=utf-8"),
            "calendar" => (&urls[1], "text/calendar; charset=utf-8"),
            _ => (&urls[2], "text/calendar; charset=utf-8"),
        };
        let url = base
            .join(&format!(
                "{}.{}",
                s.name,
                if s.collection == "contacts" {
                    "vcf"
                } else {
                    "ics"
                }
            ))
            .unwrap();
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
        let (ext, kind) = if *id == "contacts" {
            (".vcf", "carddav")
        } else {
            (".ics", "caldav")
        };
        for s in items.iter().filter(|s| s.collection == *id) {
            std::fs::write(folder.join(format!("{}{ext}", s.name)), &s.data).unwrap();
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
        let out = std::process::Command::new(common::venv().join("bin/vdirsyncer"))
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
async fn count_items(server: &Server, url: &Url) -> usize {
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = arg("--items").and_then(|v| v.parse().ok()).unwrap_or(20);
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(1);
    let kind = match arg("--server").as_deref() {
        Some("xandikos") => Kind::Xandikos,
        _ => Kind::Radicale,
    };
    let only_crmsync = flag("--only-crmsync");
    let no_vdirsyncer = flag("--no-vdirsyncer");
    let server = Server::start(kind).await;
    let items = samples(n);
    let total = items.len();
    println!(
        "{kind:?} on 127.0.0.1:{}: {n} contacts + {n} events + {n} to-dos = {total} items, {runs} run(s)",
        server.port
    );
    let http = reqwest::Client::new();
    let mut wall: [Vec<f64>; 3] = Default::default();
    let mut cpu_per_item = Vec::new();
    let mut floor_cpu_per_item = Vec::new();
    let mut quiet_crmsync = Vec::new();
    let mut quiet_floor = Vec::new();
    let mut requests_per_collection = Vec::new();
    let variants: &[usize] = if only_crmsync {
        &[0]
    } else if no_vdirsyncer {
        &[0, 1]
    } else {
        &[0, 1, 2]
    };
    for run in 0..runs {
        let mut order = variants.to_vec();
        let k = run % order.len();
        order.rotate_left(k);
        for v in order {
            let tag = format!("r{run}v{v}");
            let urls = fresh_collections(&server, &tag).await;
            let secs = match v {
                0 => {
                    let (t, cpu, states) = run_crmsync(&urls, &items).await;
                    cpu_per_item.push(cpu.as_secs_f64() * 1e6 / total as f64);
                    // No-change syncs, crmsync beside the bare REPORT.
                    let mb = mailbox_for(&urls);
                    for _ in 0..7 {
                        let before = mb.request_count();
                        let t0 = Instant::now();
                        for (id, state) in IDS.iter().zip(&states) {
                            let c = mb.changes_since(id, Some(state)).await.unwrap();
                            assert!(c.is_empty(), "{c:?}");
                        }
                        quiet_crmsync.push(t0.elapsed().as_secs_f64() * 1e3);
                        requests_per_collection
                            .push((mb.request_count() - before) as f64 / IDS.len() as f64);
                        let t0 = Instant::now();
                        for (url, state) in urls.iter().zip(&states) {
                            let json: serde_json::Value =
                                serde_json::from_str(state.as_str()).unwrap();
                            let token = json["token"].as_str().unwrap().to_owned();
                            let resp = http
                                .request(
                                    reqwest::Method::from_bytes(b"REPORT").unwrap(),
                                    url.clone(),
                                )
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
                        quiet_floor.push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                    t
                }
                1 => {
                    let cpu = cpu_self();
                    let t = run_floor(&http, &urls, &items).await;
                    floor_cpu_per_item.push((cpu_self() - cpu).as_secs_f64() * 1e6 / total as f64);
                    t
                }
                _ => {
                    let work = tempfile::tempdir().unwrap();
                    run_vdirsyncer(work.path(), &urls, &items)
                }
            };
            for url in &urls {
                assert_eq!(count_items(&server, url).await, n, "{url}");
            }
            let name = ["crmsync", "floor", "vdirsyncer"][v];
            println!(
                "run {run} {name:>10}: {:>8.2} s  {:>6.1} items/s",
                secs.as_secs_f64(),
                total as f64 / secs.as_secs_f64()
            );
            wall[v].push(secs.as_secs_f64());
        }
    }
    let m: Vec<f64> = wall.iter().map(|w| median(w)).collect();
    println!("\ninitial sync, median of {runs}:");
    println!("  crmsync     {:>8.2} s", m[0]);
    if !floor_cpu_per_item.is_empty() {
        println!(
            "  floor CPU per item (RUSAGE_SELF): median {:.0} µs (runs: {:?})",
            median(&floor_cpu_per_item),
            floor_cpu_per_item
                .iter()
                .map(|c| c.round())
                .collect::<Vec<_>>()
        );
    }
    if !only_crmsync {
        println!(
            "  floor (PUT) {:>8.2} s   crmsync/floor = {:.3}",
            m[1],
            m[0] / m[1]
        );
    }
    if !wall[2].is_empty() {
        println!(
            "  vdirsyncer  {:>8.2} s   crmsync/vdirsyncer = {:.3}",
            m[2],
            m[0] / m[2]
        );
    }
    println!(
        "  crmsync CPU per item (RUSAGE_SELF): median {:.0} µs over {total} items (runs: {:?})",
        median(&cpu_per_item),
        cpu_per_item.iter().map(|c| c.round()).collect::<Vec<_>>()
    );
    println!(
        "no-change sync of 3 collections of {n} items, median of {}: crmsync {:.1} ms, bare sync-collection REPORTs {:.1} ms, ratio {:.3}; requests per collection: {}",
        quiet_crmsync.len(),
        median(&quiet_crmsync),
        median(&quiet_floor),
        median(&quiet_crmsync) / median(&quiet_floor),
        median(&requests_per_collection)
    );
}
