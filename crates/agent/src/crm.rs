//! HTTP client of the CRM server's sync API (docs/sync-protocol.md).

use serde_json::{json, Value};

/// A refused or failed call, with the server's error code when it sent one.
#[derive(Debug, thiserror::Error)]
pub enum CrmError {
    #[error("cannot reach the CRM server at {url} ({source}); check [crm] url and that `crmsync serve` runs")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
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
        self.call_with(method, path, body.as_ref()).await
    }

    /// `call` with a body serialized straight into the request (a push of
    /// large messages is not copied into a `Value` first).
    async fn call_with<B: serde::Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Value, CrmError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let unreachable = |source| CrmError::Unreachable {
            url: self.base.clone(),
            source,
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

    /// R-C1: registers (or finds again) this client.
    pub async fn register(
        &self,
        name: &str,
        on_behalf_of: Option<&str>,
    ) -> Result<Value, CrmError> {
        let mut body = json!({"name": name});
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
        self.call(
            reqwest::Method::POST,
            "/api/v1/sync/ack",
            Some(json!({"client_id": client, "batch": batch, "items": items})),
        )
        .await
    }

    /// R-S5: the per-operation results, in order (500 operations per call).
    pub async fn push(&self, client: &str, ops: &[&Value]) -> Result<Vec<Value>, CrmError> {
        let mut out = Vec::new();
        for chunk in ops.chunks(500) {
            out.extend(self.push_chunk(client, chunk).await?);
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
            #[derive(serde::Serialize)]
            struct PushRequest<'b> {
                client_id: &'b str,
                ops: &'b [&'b Value],
            }
            let body = PushRequest {
                client_id: client,
                ops,
            };
            let send = || self.call_with(reqwest::Method::POST, "/api/v1/sync/push", Some(&body));
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
            let large = ops
                .iter()
                .map(|o| o["raw"].as_str().map_or(0, str::len))
                .sum::<usize>()
                > 1 << 20;
            let r = match r {
                Err(CrmError::Unreachable { source, .. })
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
                            "the connection was closed during a large request: {source}"
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
