//! A loopback proxy in front of PostgreSQL that counts its clients' round
//! trips (the R-V6 benchmark's "database round trips per cycle"). A client
//! waits for the server once per Sync message (the extended protocol that
//! sqlx speaks: Parse/Bind/Execute… then Sync) and once per Query message
//! (the simple protocol: BEGIN, COMMIT), so those are what it counts.
//! It also counts the statements executed, by SQL text (a Bind names its
//! prepared statement; a Query carries its text), to see where the round
//! trips go. The clients must not use TLS (`sslmode=disable`): the proxy
//! reads the plain protocol.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// SSLRequest and GSSENCRequest: startup-phase messages after which the
/// real startup message still comes.
const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];

pub struct PgRoundTrips {
    pub port: u16,
    counts: Arc<Counts>,
}

/// What every client sent so far.
#[derive(Default)]
struct Counts {
    trips: AtomicU64,
    /// Round trips that ran no statement: a Sync alone (sqlx's check of a
    /// pooled connection before handing it out) or after a Parse (the
    /// first use of a statement on a connection prepares it).
    no_statement: AtomicU64,
    statements: Mutex<HashMap<String, u64>>,
}

impl PgRoundTrips {
    /// Listens on a free loopback port and forwards to the server of
    /// `url` (`postgres://user@host:port/db`).
    pub async fn start(url: &str) -> PgRoundTrips {
        let target = server_address(url).to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Counts::default());
        let counted = counts.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (target, counted) = (target.clone(), counted.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        relay(client, server, &counted).await;
                    }
                });
            }
        });
        PgRoundTrips { port, counts }
    }

    /// Round trips of every client so far.
    pub fn count(&self) -> u64 {
        self.counts.trips.load(Ordering::Relaxed)
    }

    /// Round trips so far that ran no statement (pool checks, statement
    /// preparations).
    pub fn without_statement(&self) -> u64 {
        self.counts.no_statement.load(Ordering::Relaxed)
    }

    /// Statements executed so far, by SQL text.
    pub fn statements(&self) -> HashMap<String, u64> {
        self.counts.statements.lock().unwrap().clone()
    }

    /// `url` through the proxy, without TLS.
    pub fn url(&self, url: &str) -> String {
        let proxied = url.replacen(server_address(url), &format!("127.0.0.1:{}", self.port), 1);
        format!("{proxied}?sslmode=disable")
    }
}

/// The `host:port` of a `postgres://user@host:port/db` URL.
fn server_address(url: &str) -> &str {
    let after_scheme = &url[url.find("://").map_or(0, |i| i + 3)..];
    let authority = after_scheme.split('/').next().unwrap_or(after_scheme);
    authority.rsplit('@').next().unwrap_or(authority)
}

async fn relay(client: TcpStream, server: TcpStream, counts: &Counts) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    let mut messages = Messages::default();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to_server.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        messages.feed(&chunk[..n], counts);
    }
    let _ = to_server.shutdown().await;
    let _ = answers.await;
}

/// The client's side of the protocol, split into messages as bytes come.
#[derive(Default)]
struct Messages {
    pending: Vec<u8>,
    started: bool,
    /// This connection's prepared statements: name → SQL.
    prepared: HashMap<String, String>,
    /// Whether a Bind came since the last Sync.
    bound: bool,
}

/// The NUL-terminated strings at the start of a message's body.
fn c_strings(body: &[u8]) -> impl Iterator<Item = String> + '_ {
    body.split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
}

impl Messages {
    /// Takes more bytes; counts the Sync and Query messages completed and
    /// the statements they run.
    fn feed(&mut self, bytes: &[u8], counts: &Counts) {
        self.pending.extend_from_slice(bytes);
        let (mut at, mut waits, mut empty) = (0, 0, 0);
        let mut ran = Vec::new();
        loop {
            let rest = &self.pending[at..];
            if !self.started {
                // Startup phase: length (itself included), then the code.
                if rest.len() < 8 {
                    break;
                }
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                if rest.len() < len {
                    break;
                }
                let code = u32::from_be_bytes(rest[4..8].try_into().unwrap());
                self.started = !ENCRYPTION_REQUESTS.contains(&code);
                at += len;
            } else {
                // Type byte, then length (itself included).
                if rest.len() < 5 {
                    break;
                }
                let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
                if rest.len() < 1 + len {
                    break;
                }
                let body = &rest[5..1 + len];
                match rest[0] {
                    b'S' => {
                        waits += 1;
                        if !std::mem::take(&mut self.bound) {
                            empty += 1;
                        }
                    }
                    b'Q' => {
                        waits += 1;
                        ran.extend(c_strings(body).next());
                    }
                    b'P' => {
                        let mut s = c_strings(body);
                        if let (Some(name), Some(sql)) = (s.next(), s.next()) {
                            self.prepared.insert(name, sql);
                        }
                    }
                    b'B' => {
                        self.bound = true;
                        let name = c_strings(body).nth(1).unwrap_or_default();
                        ran.push(self.prepared.get(&name).cloned().unwrap_or(name));
                    }
                    _ => {}
                }
                at += 1 + len;
            }
        }
        self.pending.drain(..at);
        counts.trips.fetch_add(waits, Ordering::Relaxed);
        counts.no_statement.fetch_add(empty, Ordering::Relaxed);
        if !ran.is_empty() {
            let mut statements = counts.statements.lock().unwrap();
            for sql in ran {
                *statements.entry(sql).or_default() += 1;
            }
        }
    }
}
