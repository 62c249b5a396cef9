//! Shared by the end-to-end benchmarks (imap.rs, dav.rs, agent.rs): one
//! `crmsync sync` process measured from outside, a proxy that records the
//! requests a client sends to a server, seeding the CRM, medians.

#![allow(dead_code)]

pub mod pg_round_trips;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A list argument `--name 1,2,3`.
pub fn arg_list(name: &str, default: &[usize]) -> Vec<usize> {
    let argv: Vec<String> = std::env::args().collect();
    argv.iter()
        .position(|a| a == name)
        .and_then(|i| argv.get(i + 1))
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// One `crmsync sync --json` process, measured from outside.
pub struct SyncRun {
    pub wall: Duration,
    pub report: Value,
    /// Peak RSS of that process alone (its VmHWM, read while it runs),
    /// in MiB.
    pub peak_rss_mib: f64,
    /// Its own CPU time, user + system (wait4's rusage of that child).
    pub cpu: Duration,
}

/// Runs `bin sync --json --config config`; it must succeed.
// The child is reaped by wait4 (for its status and rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
pub fn sync_process(bin: &str, config: &Path) -> SyncRun {
    let t = Instant::now();
    let child = Command::new(bin)
        .args(["sync", "--json", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // Read the output on threads so the child never blocks on a full pipe.
    let mut out = child.stdout.unwrap();
    let mut err = child.stderr.unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).unwrap();
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).unwrap();
        v
    });
    // Peak RSS: the process's own VmHWM, read while it runs (wait4's
    // ru_maxrss would count this benchmark's memory: a spawned child
    // inherits its parent's high-water mark).
    let done = Arc::new(AtomicBool::new(false));
    let stop = done.clone();
    let hwm = std::thread::spawn(move || {
        let mut peak = 0.0f64;
        while !stop.load(Ordering::SeqCst) {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kb) = status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
                {
                    peak = peak.max(kb / 1024.0);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak
    });
    let mut status = 0;
    // SAFETY: wait4 on our own child, writing into zeroed structs we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid);
    let wall = t.elapsed();
    done.store(true, Ordering::SeqCst);
    let peak_rss_mib = hwm.join().unwrap();
    let stdout = o.join().unwrap();
    let stderr = e.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "crmsync sync failed: {}",
        String::from_utf8_lossy(&stderr)
    );
    let report: Value = serde_json::from_slice(&stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&stdout));
    });
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    SyncRun {
        wall,
        report,
        peak_rss_mib,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
    }
}

/// A TCP proxy in front of `127.0.0.1:target` that records, for every line
/// a client sends, `name(line)` when it is `Some` (an IMAP command name, an
/// HTTP request line). Returns the proxy's port and the record.
pub async fn counting_proxy(
    target: u16,
    name: fn(&str) -> Option<String>,
) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let server = TcpStream::connect(("127.0.0.1", target)).await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let down = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                let mut line = Vec::new();
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    for &b in &buf[..n] {
                        line.push(b);
                        if b == b'\n' {
                            if let Some(n) = name(&String::from_utf8_lossy(&line)) {
                                log.lock().unwrap().push(n);
                            }
                            line.clear();
                        }
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                down.abort();
            });
        }
    });
    (port, seen)
}

/// Seeds the CRM over its REST API with `n` contacts, `n` appointments and
/// `n` open tasks, 16 requests at a time. Returns the time it took and the
/// id of the first contact.
pub async fn seed_crm(base: &str, token: &str, n: usize) -> (Duration, String) {
    let http = reqwest::Client::new();
    let t = Instant::now();
    let mut bodies = Vec::new();
    for i in 0..n {
        bodies.push((
            "contacts",
            json!({"first_name": "Person", "last_name": format!("N{i}"),
                   "email": format!("p{i}@example.com"), "phone": "+1 555 0100"}),
        ));
        bodies.push((
            "appointments",
            json!({"subject": format!("Meeting {i}"), "location": "Room 1",
                   "start": "2027-03-01T09:00:00Z", "end": "2027-03-01T10:00:00Z"}),
        ));
        bodies.push((
            "tasks",
            json!({"subject": format!("Task {i}"), "due": "2027-03-01T09:00:00Z", "state": "open"}),
        ));
    }
    let mut first_contact = None;
    for chunk in bodies.chunks(16) {
        let calls = chunk.iter().map(|(set, body)| {
            http.post(format!("{base}/api/v1/{set}"))
                .bearer_auth(token)
                .json(body)
                .send()
        });
        for r in futures_util::future::join_all(calls).await {
            let r = r.unwrap();
            assert_eq!(r.status().as_u16(), 201);
            let v: Value = r.json().await.unwrap();
            if first_contact.is_none() && v["first_name"] == "Person" {
                first_contact = Some(v["id"].as_str().unwrap().to_string());
            }
        }
    }
    (t.elapsed(), first_contact.unwrap_or_default())
}

/// An agent configuration `dir/{name}.toml` of a new client `name` whose
/// mailbox is `[mailbox.dav]` with the collections `urls` (contacts,
/// calendar, tasks), scheduled syncs every 15 minutes.
pub fn dav_config(
    dir: &Path,
    crm: &crate::support::Server,
    name: &str,
    urls: &[crmsync_dav::Url; 3],
    user: &str,
    password: &str,
) -> PathBuf {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[crm]\nurl = \"{}\"\ntoken = \"{}\"\n[client]\nname = \"{name}\"\ncache = \"{}\"\n[mailbox.dav]\ncontacts = \"{}\"\ncalendar = \"{}\"\ntasks = \"{}\"\nusername = \"{user}\"\npassword = \"{password}\"\n[sync]\ninterval = \"15m\"\n",
            crm.base,
            crm.token,
            dir.join(format!("{name}-cache.db")).display(),
            urls[0],
            urls[1],
            urls[2]
        ),
    )
    .unwrap();
    config
}
