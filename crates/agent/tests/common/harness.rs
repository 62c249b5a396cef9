// The end-to-end harness shared by the agent's test files (included with
// `include!`): a real CRM server in-process and local mailboxes in a temp folder.

struct World {
    base: String,
    admin: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("crm.db").display());
    let store = crmsync_server::Store::connect(&url).await.unwrap();
    let admin = crmsync_server::records::init_organization(&store, "admin@example.com", "Admin")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        crmsync_server::serve(store, listener, crmsync_server::DEFAULT_MAX_BODY, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    World {
        base,
        admin,
        http: reqwest::Client::new(),
        dir,
        _stop: stop,
    }
}

impl World {
    async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A user; returns (id, token).
    async fn user(&self, email: &str) -> (String, String) {
        let (status, body) = self
            .call(
                &self.admin,
                Method::POST,
                "/api/v1/users",
                Some(json!({"email": email, "name": email})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().into(),
            body["token"].as_str().unwrap().into(),
        )
    }

    async fn contact(&self, token: &str, last: &str) -> String {
        let (status, body) = self
            .call(
                token,
                Method::POST,
                "/api/v1/contacts",
                Some(json!({"last_name": last, "email": format!("{}@example.com", last.to_lowercase())})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().into()
    }

    async fn my_contacts(&self, token: &str) -> Vec<Value> {
        let (status, body) = self
            .call(
                token,
                Method::GET,
                "/api/v1/contacts?owner=me&limit=500",
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    /// An agent of `token` on the mailbox `name` with cache `cache`.
    async fn agent(&self, token: &str, name: &str, cache: &str) -> Agent {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        let cfg_path = self.dir.path().join(format!("{name}-{cache}.toml"));
        let text = format!(
            "[crm]\nurl = \"{}\"\ntoken = \"{token}\"\n[client]\nname = \"{name}\"\ncache = \"{cache}.db\"\n[mailbox.local]\nroot = \"{}\"\n",
            self.base,
            root.display()
        );
        std::fs::write(&cfg_path, text).unwrap();
        Agent::open(Config::load(&cfg_path).unwrap()).await.unwrap()
    }

    /// PATCHes a contact in the CRM; the change must be accepted.
    async fn patch_contact(&self, token: &str, id: &str, body: Value) {
        let (status, reply) = self
            .call(
                token,
                Method::PATCH,
                &format!("/api/v1/contacts/{id}"),
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "{reply}");
    }

    fn contacts_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("contacts")
    }
}

/// The vCards of a mailbox: (file, parsed item).
fn vcards(dir: &Path) -> Vec<(PathBuf, crmsync_core::mapping::MailboxItem)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "vcf"))
        .map(|p| {
            let item = parse_item(&std::fs::read(&p).unwrap()).unwrap();
            (p, item)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn find<'a>(
    items: &'a [(PathBuf, crmsync_core::mapping::MailboxItem)],
    crm_id: &str,
) -> Option<&'a (PathBuf, crmsync_core::mapping::MailboxItem)> {
    items
        .iter()
        .find(|(_, i)| i.crm_id.map(|u| u.to_string()).as_deref() == Some(crm_id))
}

/// Edits a vCard as a mail client would: one field changed, the rest kept.
fn edit(path: &Path, field: &str, value: &str) {
    let bytes = std::fs::read(path).unwrap();
    let mut item = parse_item(&bytes).unwrap();
    item.fields.insert(field.into(), json!(value));
    let mut opts = RenderOptions::new(time::OffsetDateTime::now_utc());
    opts.existing = Some(&bytes);
    std::fs::write(path, render_item(&item, &opts).unwrap()).unwrap();
}

async fn sync(agent: &Agent) -> crmsync_agent::SyncReport {
    let r = agent.sync_once(SyncOptions::default()).await.unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(r.refused.is_empty(), "{r:?}");
    r
}
