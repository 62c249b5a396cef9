//! HTTP client of the CRM server's sync API (docs/sync-protocol.md).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use crmsync_core::kind::MailboxKind;
use serde_json::{json, Value};

/// A refused or failed call, with the server's error code when it sent one.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    /// The message carries the whole cause (reqwest's chain); the error
    /// is not also a `source`, so a printed chain says it once.
    #[error(
        "cannot reach the CRM server at {url} ({}); check [crm] url and that `crmsync serve` runs",
        causes(error)
    )]
    Unreachable { url: String, error: reqwest::Error },
    #[error(
        "the CRM server refused the token (401); check [crm] token or the CRMSYNC_TOKEN variable"
    )]
    Unauthorized,
    #[error("the CRM server answered {status} to {what}: {code}: {message}")]
    Refused {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
}

/// An error and its causes in one line, each once ("a: b: c").
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        next = cause.source();
    }
    out
}

impl CrmError {
    pub fn code(&self) -> Option<&str> {
        match self {
            CrmError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CrmClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl CrmClient {
    pub fn new(base: &str, token: &str) -> CrmClient {
        CrmClient {
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CrmError> {
        let body = body.map(|b| reqwest::Body::from(serde_json::to_vec(&b).unwrap_or_default()));
        self.call_with(method, path, body).await
    }

    /// `call` with a JSON body already made (a push streams large messages
    /// from their spool files, see `push_body`).
    async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<reqwest::Body>,
    ) -> Result<Value, CrmError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        // The message names the server once: reqwest's own text would
        // repeat it with the path.
        let unreachable = |error: reqwest::Error| CrmError::Unreachable {
            url: self.base.clone(),
            error: error.without_url(),
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.as_u16() == 401 {
            return Err(CrmError::Unauthorized);
        }
        if !status.is_success() {
            return Err(CrmError::Refused {
                what: format!("{method} {}", path.split('?').next().unwrap_or(path)),
                status: status.as_u16(),
                code: value["error"]["code"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
                message: value["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned()),
            });
        }
        Ok(value)
    }

    /// R-C1: registers (or finds again) this client, saying which kinds of
    /// collection its mailbox holds (SPEC §13).
    pub async fn register(
        &self,
        name: &str,
        on_behalf_of: Option<&str>,
        kinds: &[MailboxKind],
    ) -> Result<Value, CrmError> {
        let mut body = json!({"name": name, "kinds": kinds});
        if let Some(u) = on_behalf_of {
            body["on_behalf_of"] = json!(u);
        }
        self.call(reqwest::Method::POST, "/api/v1/sync/clients", Some(body))
            .await
    }

    /// R-S2.
    pub async fn prepare(&self, client: &str) -> Result<Value, CrmError> {
        self.call(
            reqwest::Method::POST,
            "/api/v1/sync/prepare",
            Some(json!({"client_id": client})),
        )
        .await
    }

    /// R-S3: one page of a batch's deliveries and the cursor of the next page:
    /// the engine applies a page before it fetches the next, so memory stays
    /// flat however large the batch.
    pub async fn deliveries_page(
        &self,
        client: &str,
        batch: &str,
        cursor: Option<i64>,
    ) -> Result<(Vec<Value>, Option<i64>), CrmError> {
        let cursor = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let mut page = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/sync/data?client_id={client}&batch={batch}{cursor}"),
                None,
            )
            .await?;
        let items = match page["items"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        Ok((items, page["next_cursor"].as_i64()))
    }

    /// R-S3: full records for `ids` (500 at a time).
    pub async fn records(
        &self,
        client: &str,
        batch: &str,
        ids: &[String],
    ) -> Result<Vec<Value>, CrmError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let got = self
                .call(
                    reqwest::Method::GET,
                    &format!(
                        "/api/v1/sync/data?client_id={client}&batch={batch}&ids={}",
                        chunk.join(",")
                    ),
                    None,
                )
                .await?;
            out.extend(got["records"].as_array().cloned().unwrap_or_default());
        }
        Ok(out)
    }

    /// R-S4.
    pub async fn ack(
        &self,
        client: &str,
        batch: &str,
        items: &[(String, i64)],
    ) -> Result<Value, CrmError> {
        let items: Vec<Value> = items
            .iter()
            .map(|(id, version)| json!({"id": id, "version": version}))
            .collect();
        let answer = self
            .call(
                reqwest::Method::POST,
                "/api/v1/sync/ack",
                Some(json!({"client_id": client, "batch": batch, "items": items})),
            )
            .await?;
        crate::fault::step("acknowledgement answered");
        Ok(answer)
    }

    /// R-W6: the items this mailbox cannot read, `(where, what and the
    /// fix)`, replacing what the server showed.
    pub async fn set_problems(
        &self,
        client: &str,
        problems: &[(String, String)],
    ) -> Result<(), CrmError> {
        let items: Vec<Value> = problems
            .iter()
            .map(|(item, problem)| json!({"item": item, "problem": problem}))
            .collect();
        self.call(
            reqwest::Method::PUT,
            &format!("/api/v1/sync/clients/{client}/problems"),
            Some(json!({"items": items})),
        )
        .await?;
        Ok(())
    }

    /// R-S5: the per-operation results, in order (500 operations per call).
    pub async fn push(&self, client: &str, ops: &[&Value]) -> Result<Vec<Value>, CrmError> {
        let mut out = Vec::new();
        for chunk in ops.chunks(500) {
            out.extend(self.push_chunk(client, chunk).await?);
            crate::fault::step("push answered");
        }
        Ok(out)
    }

    /// One push request. A body over the server's limit (413, its
    /// `--max-body`) is split until each operation goes alone; one refused
    /// alone is answered as refused, so a large message is reported on its
    /// own and never holds back the others (nor, journaled, every later sync).
    fn push_chunk<'a>(
        &'a self,
        client: &'a str,
        ops: &'a [&'a Value],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<Value>, CrmError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let send = || {
                let body = push_body(client, ops);
                self.call_with(reqwest::Method::POST, "/api/v1/sync/push", Some(body))
            };
            let mut r = send().await;
            if matches!(r, Err(CrmError::Unreachable { .. })) {
                // A connection the server closed (after refusing a large
                // body it does not read the rest) fails the next request
                // sent on it: one retry, on a new connection (an op_id
                // replayed changes nothing).
                r = send().await;
            }
            // A server refusing a large body may also close the connection
            // before its 413 is read: a large request that did not reach a
            // server still answering is taken as too large.
            let large = ops.iter().map(|o| raw_len(o)).sum::<u64>() > 1 << 20;
            let r = match r {
                Err(CrmError::Unreachable { error, .. })
                    if large
                        && self
                            .call(reqwest::Method::GET, "/healthz", None)
                            .await
                            .is_ok() =>
                {
                    Err(CrmError::Refused {
                        what: "POST /api/v1/sync/push".into(),
                        status: 413,
                        code: "payload_too_large".into(),
                        message: format!(
                            "the connection was closed during a large request: {}",
                            causes(&error)
                        ),
                    })
                }
                r => r,
            };
            match r {
                Ok(r) => Ok(r["results"].as_array().cloned().unwrap_or_default()),
                Err(CrmError::Refused {
                    status: 413,
                    message,
                    ..
                }) => {
                    if ops.len() == 1 {
                        return Ok(vec![
                            json!({"status": "refused", "code": "payload_too_large",
                            "message": format!("the operation is too large for the CRM server's request limit ({message})")}),
                        ]);
                    }
                    let (a, b) = ops.split_at(ops.len() / 2);
                    let mut out = self.push_chunk(client, a).await?;
                    out.extend(self.push_chunk(client, b).await?);
                    Ok(out)
                }
                Err(e) => Err(e),
            }
        })
    }

    /// R-T7: waits until a CRM change after `since` may concern this
    /// client (true), or the server's time limit passes (false). The
    /// request gives up a while after the server's one minute, so a
    /// connection that died silently is noticed.
    pub async fn wait_for_changes(&self, client: &str, since: i64) -> Result<bool, CrmError> {
        let url = format!(
            "{}/api/v1/sync/wait?client_id={client}&since={since}",
            self.base
        );
        let unreachable = |error: reqwest::Error| CrmError::Unreachable {
            url: self.base.clone(),
            error: error.without_url(),
        };
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(75))
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let value: Value = resp.json().await.map_err(unreachable)?;
        match status.as_u16() {
            200 => Ok(value["changed"] == true),
            401 => Err(CrmError::Unauthorized),
            code => Err(CrmError::Refused {
                what: "GET /api/v1/sync/wait".into(),
                status: code,
                code: value["error"]["code"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
                message: value["error"]["message"].as_str().unwrap_or("").to_string(),
            }),
        }
    }

    /// Any other call of the sync API (the `crmsync` commands: clients,
    /// conflicts, explain).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CrmError> {
        self.call(method, path, body).await
    }
}

/// The base64 length of an operation's message: inline (`raw`) or in its
/// spool file (`raw_file`).
fn raw_len(op: &Value) -> u64 {
    match (op["raw"].as_str(), op["raw_file"].as_str()) {
        (Some(raw), _) => raw.len() as u64,
        (None, Some(file)) => std::fs::metadata(file).map_or(0, |m| m.len() / 3 * 4),
        _ => 0,
    }
}

/// A piece of a push request body: JSON text, or a spooled message sent
/// as base64.
enum Segment {
    Text(Vec<u8>),
    File(std::path::PathBuf),
}

/// The body of `POST /sync/push`. An operation whose message is spooled
/// (`raw_file`: a large message, mail/mod.rs) gets its `raw` streamed from
/// the file, base64-encoded 48 KiB at a time, so the message is never held
/// whole; serde cannot stream a field from a file, hence the JSON is put
/// together here. A spool file that is gone is sent as no `raw` at all:
/// the CRM refuses that operation clearly and the journal moves on.
fn push_body(client: &str, ops: &[&Value]) -> reqwest::Body {
    let mut segments = push_segments(client, ops);
    match segments.as_mut_slice() {
        // Nothing spooled: one buffer, sent with its length.
        [Segment::Text(text)] => reqwest::Body::from(std::mem::take(text)),
        _ => reqwest::Body::wrap_stream(stream_segments(segments)),
    }
}

/// The pieces of a push body, in order: JSON text and spool files.
fn push_segments(client: &str, ops: &[&Value]) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut text = format!("{{\"client_id\":{},\"ops\":[", Value::from(client)).into_bytes();
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        match op["raw_file"].as_str().map(std::path::PathBuf::from) {
            None => text.extend(serde_json::to_vec(op).unwrap_or_default()),
            Some(file) => {
                // Small: a spooled operation holds no `raw`.
                let mut rest = (*op).clone();
                if let Some(m) = rest.as_object_mut() {
                    m.remove("raw_file");
                }
                let json = serde_json::to_vec(&rest).unwrap_or_default();
                // `{…` without its `}`: `"raw":"<base64>"}` is appended.
                match json.strip_suffix(b"}") {
                    Some(open) if file.exists() => {
                        text.extend_from_slice(open);
                        if open.len() > 1 {
                            text.push(b',');
                        }
                        text.extend_from_slice(b"\"raw\":\"");
                        segments.push(Segment::Text(std::mem::take(&mut text)));
                        segments.push(Segment::File(file));
                        text.extend_from_slice(b"\"}");
                    }
                    _ => text.extend(json),
                }
            }
        }
    }
    text.extend_from_slice(b"]}");
    segments.push(Segment::Text(text));
    segments
}

/// The segments as bytes, spool files base64-encoded 48 KiB at a time.
fn stream_segments(
    segments: Vec<Segment>,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures_util::stream::unfold(
        (segments.into_iter(), None::<std::fs::File>),
        |(mut rest, mut file)| async move {
            loop {
                if let Some(f) = file.as_mut() {
                    // A multiple of 3: no padding but at the very end.
                    let mut buf = vec![0u8; 3 * 16 * 1024];
                    match read_full(f, &mut buf) {
                        Ok(0) => file = None,
                        Ok(n) => {
                            let part = STANDARD.encode(&buf[..n]).into_bytes();
                            return Some((Ok::<_, std::io::Error>(part), (rest, file)));
                        }
                        Err(e) => return Some((Err(e), (rest, None))),
                    }
                    continue;
                }
                match rest.next()? {
                    Segment::Text(t) => return Some((Ok(t), (rest, None))),
                    Segment::File(path) => match std::fs::File::open(&path) {
                        Ok(f) => file = Some(f),
                        Err(e) => return Some((Err(e), (rest, None))),
                    },
                }
            }
        },
    )
}

/// Fills `buf` unless the file ends first; the bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    async fn body_of(client: &str, ops: &[&Value]) -> Value {
        let mut bytes = Vec::new();
        let mut parts = std::pin::pin!(stream_segments(push_segments(client, ops)));
        while let Some(part) = parts.next().await {
            bytes.extend(part.unwrap());
        }
        serde_json::from_slice(&bytes).expect("the push body is JSON")
    }

    #[tokio::test]
    async fn spooled_messages_are_streamed_into_the_push_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        // Several 48 KiB pieces and a length that is not a multiple of 3.
        let raw: Vec<u8> = (0..150_001u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = dir.path().join("m.eml");
        std::fs::write(&file, &raw).unwrap();
        let spooled = json!({"op_id": "a", "kind": "track", "set": "emails",
            "raw_file": file.to_string_lossy(), "message_id": "m@x"});
        let inline = json!({"op_id": "b", "kind": "track", "set": "emails", "raw": "aGk="});
        let gone = json!({"op_id": "c", "kind": "track", "raw_file": dir.path().join("gone.eml").to_string_lossy()});
        let body = body_of("client-1", &[&inline, &spooled, &gone]).await;
        assert_eq!(body["client_id"], "client-1");
        let ops = body["ops"].as_array().unwrap();
        assert_eq!(ops[0], inline, "an inline operation is sent as it is");
        let sent = STANDARD.decode(ops[1]["raw"].as_str().unwrap()).unwrap();
        assert!(sent == raw, "the spooled bytes changed");
        assert_eq!(ops[1]["message_id"], "m@x");
        assert!(ops[1].get("raw_file").is_none());
        assert_eq!(ops[2]["op_id"], "c");
        assert!(
            ops[2].get("raw").is_none(),
            "a spool file that is gone: no raw"
        );
        let empty = body_of("client-1", &[]).await;
        assert_eq!(empty["ops"], json!([]));
    }
}
