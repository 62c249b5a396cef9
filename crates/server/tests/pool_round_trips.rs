//! BENCHMARKS.md "REST GET within 2× the axum+SQLite floor": a query on a
//! connection the pool used a moment ago is not preceded by a ping (sqlx's
//! default pings every connection it hands out: a PostgreSQL round trip
//! before each query). sqlx 0.8 still pings every connection it takes back
//! (after the answer, off the request's path), so a query costs two round
//! trips, not three. Counted through a TCP proxy in front of the real server.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::Backend;
use crmsync_server::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A proxy to `target` counting round trips: requests from the client that
/// follow an answer from the server (or open the connection), over all
/// connections. Counted on the client's side because a client may send its
/// next request before the tail of the previous answer has arrived.
async fn round_trip_proxy(target: String) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let trips = Arc::new(AtomicUsize::new(0));
    let count = trips.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&target).await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            // Whether the server spoke last on this connection.
            let server_last = Arc::new(AtomicBool::new(true));
            let flag = server_last.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = cr.read(&mut buf).await {
                    if flag.swap(false, Ordering::SeqCst) {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = sr.read(&mut buf).await {
                    server_last.store(true, Ordering::SeqCst);
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, trips)
}

#[tokio::test]
async fn bench_rest_hot_pooled_query_is_not_pinged_first_on_postgres() {
    let db = common::fresh_db(Backend::Postgres).await;
    // postgres://USER@HOST:PORT/DB
    let (head, rest) = db.url.split_once('@').unwrap();
    let (host_port, name) = rest.split_once('/').unwrap();
    let target = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    };
    let (port, trips) = round_trip_proxy(target).await;
    let store = Store::connect(&format!("{head}@127.0.0.1:{port}/{name}"))
        .await
        .unwrap();
    // The record query is prepared once per connection, and connections
    // idle since the migrations are pinged once: warm them all.
    let id = uuid::Uuid::new_v4();
    for _ in 0..50 {
        assert!(store.get(id).await.unwrap().is_none());
    }
    let before = trips.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert!(store.get(id).await.unwrap().is_none());
    }
    let trips = trips.load(Ordering::SeqCst) - before;
    // Two per query (the query, sqlx's ping on release); pinging before
    // each query too makes 60. The pool hands its idle connections out in
    // turn, so on a loaded machine one may have waited the second after
    // which a ping is due (seen: 42): a few such pings are allowed.
    assert!(
        (40..46).contains(&trips),
        "round trips of 20 queries on hot pooled connections: {trips} (40 = one each plus sqlx's ping on release; 60 = pinged before each)"
    );
}
