//! The `crmsync` command (SPEC §12). Exit status: 0 success, 1 failure,
//! 2 bad usage.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use crmsync_server::Store;

use crmsync_offline as offline;

const DEFAULT_DB: &str = "sqlite://./crmsync-data/crm.db";

#[derive(Parser)]
#[command(
    name = "crmsync",
    version,
    about = "Keeps a CRM and people's mailboxes in step"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Db {
    /// Database: sqlite://PATH (created on first use) or postgres://USER@HOST:PORT/DB.
    #[arg(long, env = "CRMSYNC_DB", default_value = DEFAULT_DB)]
    db: String,
}

#[derive(Args)]
struct KeyFile {
    /// The key that encrypts mailbox passwords at rest (`crmsync admin
    /// gen-key FILE` makes one). Default: secret.key beside a SQLite database.
    #[arg(long, env = crmsync_server::secrets::KEY_FILE_ENV)]
    secret_key_file: Option<PathBuf>,
}

impl KeyFile {
    /// The key file named, else the one beside a SQLite database if it
    /// exists; `None`: the server stores no secrets (R-V2).
    fn find(&self, db: &str) -> anyhow::Result<Option<crmsync_server::secrets::SecretKey>> {
        use crmsync_server::secrets::{key_file_beside, SecretKey};
        let path = match &self.secret_key_file {
            Some(p) => p.clone(),
            None => match key_file_beside(db).filter(|p| p.exists()) {
                Some(p) => p,
                None => return Ok(None),
            },
        };
        Ok(Some(SecretKey::load(&path)?))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the CRM server (REST API).
    Serve {
        #[command(flatten)]
        db: Db,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: String,
        /// Largest accepted request body, in bytes.
        #[arg(long, default_value_t = crmsync_server::DEFAULT_MAX_BODY)]
        max_body: usize,
        #[command(flatten)]
        key: KeyFile,
        /// Workers synchronizing the mailboxes connected to the server
        /// (default 4 on PostgreSQL, 1 on SQLite; 0: none).
        #[arg(long)]
        sync_workers: Option<usize>,
        /// At most this many synchronizations of this process at once
        /// against one mail or DAV server.
        #[arg(long, default_value_t = crmsync_hosted::DEFAULT_CONNECTIONS_PER_HOST as u64,
              value_parser = clap::value_parser!(u64).range(1..=10_000))]
        sync_connections_per_host: u64,
    },
    /// Organization administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Run the sync agent: at start, on mailbox changes and on the schedule.
    Agent {
        /// The agent configuration (SPEC §13).
        #[arg(long)]
        config: PathBuf,
    },
    /// Server on SQLite + agent on a local mailbox folder, for one user.
    Up {
        /// Where the database, the token, the configuration and the mailbox live.
        #[arg(long, default_value = "./crmsync-up")]
        dir: PathBuf,
        /// Address the server listens on.
        #[arg(long, default_value = "127.0.0.1:8480")]
        listen: String,
    },
    /// Synchronize the mailbox with the CRM now and wait for completion (R-T1).
    Sync {
        /// The agent configuration (SPEC §13).
        #[arg(long)]
        config: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Go on with a sync that would delete many items (R-T5).
        #[arg(long)]
        allow_mass_delete: bool,
    },
    /// Show the agent's state: items per link state (R-M3), the conflict
    /// log (--conflicts, R-F6) or one item (ITEM: uid:<UID> or a path).
    Status {
        /// The agent configuration (SPEC §13).
        #[arg(long)]
        config: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// List the values discarded by merges (R-F6), newest first.
        #[arg(long, conflicts_with = "item")]
        conflicts: bool,
        /// One item: uid:<UID> or the path of a file inside the mailbox.
        item: Option<String>,
    },
    /// Track items now (R-M1): adds the `Tracked to CRM` category, then
    /// synchronizes and waits until they are in the CRM (always --wait).
    Track {
        #[arg(long)]
        config: PathBuf,
        /// uid:<UID> or a path inside the mailbox; several = bulk.
        #[arg(required = true)]
        items: Vec<String>,
        /// Regarding of the tracked activities: SET/ID.
        #[arg(long)]
        regarding: Option<String>,
        /// Accepted for SPEC §12; the command always waits.
        #[arg(long)]
        wait: bool,
    },
    /// Stop tracking items: removes the marker and synchronizes (waits).
    Untrack {
        #[arg(long)]
        config: PathBuf,
        #[arg(required = true)]
        items: Vec<String>,
        /// Delete the record in the CRM too (at once).
        #[arg(long)]
        delete_in_crm: bool,
        /// Accepted for SPEC §12; the command always waits.
        #[arg(long)]
        wait: bool,
    },
    /// Set the regarding of tracked activities (X-CRM-REGARDING + CRM), at once.
    Regarding {
        #[arg(long)]
        config: PathBuf,
        /// uid:<UID> or a path inside the mailbox; several = bulk, SET/ID last.
        #[arg(required = true, num_args = 2..)]
        args: Vec<String>,
        /// Accepted for SPEC §12; the command always waits.
        #[arg(long)]
        wait: bool,
    },
    /// Why an item or a CRM record does or does not synchronize.
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// uid:<UID> or a path inside the mailbox.
        #[arg(required_unless_present = "crm", conflicts_with = "crm")]
        item: Option<String>,
        /// A CRM record: SET/ID.
        #[arg(long)]
        crm: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// This user's sync clients (R-C1).
    Client {
        /// The agent configuration (SPEC §13); before or after the subcommand.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Serve the offline copy of the CRM (the API and the web pages) at
    /// [offline] listen, for working without a connection; the changes
    /// made there go to the CRM at the next sync.
    Offline {
        /// The agent configuration (SPEC §13).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClientCommand {
    /// The user's clients and their roles; `*` marks this one.
    List {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the client NAME (default: this one) the primary.
    SetPrimary { name: Option<String> },
    /// Forget the items deleted in this mailbox (R-S9): the next sync delivers them again.
    Reset,
}

/// Turns the agent's usage errors into exit status 2.
fn usage_exit(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<crmsync_agent::commands::UsageError>() {
        Ok(u) => BadUsage(u.0).into(),
        Err(e) => e,
    }
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "(empty)".into(),
        other => other.to_string(),
    }
}

async fn run_command(command: Command) -> anyhow::Result<()> {
    use crmsync_agent::commands as cmd;
    match command {
        Command::Status {
            config,
            json,
            conflicts: true,
            ..
        } => {
            let agent = open_agent(&config).await?;
            let list = cmd::conflicts(&agent).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no conflicts");
            } else {
                for c in list {
                    println!(
                        "{} {}/{} {}: CRM {} / mailbox {}; kept the {} value",
                        c.at,
                        c.set,
                        c.record,
                        c.field,
                        show(&c.crm_value),
                        show(&c.mailbox_value),
                        c.kept
                    );
                }
            }
            Ok(())
        }
        Command::Status {
            config,
            json,
            item: Some(item),
            ..
        } => {
            let agent = open_agent(&config).await?;
            let s = cmd::item_status(&agent, &item).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "{}\n  uid: {}\n  set: {}\n  link state: {} ({})\n  CRM id: {}\n  version: {}",
                    s.path,
                    s.uid,
                    s.set,
                    s.link,
                    s.link_state,
                    s.crm_id.as_deref().unwrap_or("(none)"),
                    s.version
                );
            }
            Ok(())
        }
        Command::Track {
            config,
            items,
            regarding,
            ..
        } => {
            let agent = open_agent(&config).await?;
            let r = cmd::track(&agent, &items, regarding.as_deref()).await?;
            for (path, id) in &r.items {
                match id {
                    Some(id) => println!("tracked {path} as {id}"),
                    None => println!("marked {path}; the mailbox owner's primary client tracks it at its next sync"),
                }
            }
            Ok(())
        }
        Command::Untrack {
            config,
            items,
            delete_in_crm,
            ..
        } => {
            let agent = open_agent(&config).await?;
            let r = cmd::untrack(&agent, &items, delete_in_crm).await?;
            for (path, _) in &r.items {
                if delete_in_crm {
                    println!("untracked {path}; deleted in the CRM where the deletion rules allow");
                } else {
                    println!("untracked {path}");
                }
            }
            Ok(())
        }
        Command::Regarding {
            config, mut args, ..
        } => {
            let target = args.pop().unwrap_or_default();
            let agent = open_agent(&config).await?;
            let r = cmd::set_regarding(&agent, &args, &target).await?;
            for (path, _) in &r.items {
                println!("{path}: regarding {target}");
            }
            Ok(())
        }
        Command::Explain {
            config,
            item,
            crm,
            json,
        } => {
            let agent = open_agent(&config).await?;
            let e = cmd::explain(&agent, item.as_deref(), crm.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!(
                    "{}/{} {} this mailbox{}:",
                    e.set,
                    e.id,
                    if e.delivered {
                        "reaches"
                    } else {
                        "does not reach"
                    },
                    if e.in_mailbox {
                        " (the mailbox holds it)"
                    } else {
                        ""
                    }
                );
                for r in &e.reasons {
                    println!("  - {r}");
                }
            }
            Ok(())
        }
        Command::Client { config, command } => {
            let config = config.ok_or_else(|| {
                BadUsage("--config FILE is required: crmsync client --config FILE list | set-primary [NAME] | reset".into())
            })?;
            let agent = open_agent(&config).await?;
            match command {
                ClientCommand::List { json } => {
                    let list = cmd::client_list(&agent).await?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        for c in list {
                            println!(
                                "{} {}  {}{}  {}",
                                if c.this { "*" } else { " " },
                                c.name,
                                c.role,
                                if c.acts_as_primary && c.role != "primary" {
                                    " (acts as primary: roaming)"
                                } else {
                                    ""
                                },
                                c.id
                            );
                        }
                    }
                }
                ClientCommand::SetPrimary { name } => {
                    let c = cmd::client_set_primary(&agent, name.as_deref()).await?;
                    println!("{} is now the primary client", c.name);
                }
                ClientCommand::Reset => {
                    let id = cmd::client_reset(&agent).await?;
                    println!("client {id} reset: the next sync delivers again what was deleted in this mailbox");
                }
            }
            Ok(())
        }
        _ => unreachable!("run_command is only called for the commands above"),
    }
}

/// A failure that is the user's usage (exit status 2).
#[derive(Debug)]
struct BadUsage(String);

impl std::fmt::Display for BadUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadUsage {}

/// R-O1 after a sync: the offline changes played back and the replica
/// refreshed. A failure is reported and the sync's result stands.
async fn keep_offline_copy(agent: &crmsync_agent::Agent, copy: &mut offline::OfflineCopy) {
    let cfg = agent.config();
    let Some((client, _)) = agent.crm_position() else {
        return;
    };
    match copy.go_online(agent.crm(), &cfg.token, &client).await {
        Ok(r) => {
            if r.played_back > 0 || !r.refused.is_empty() {
                eprintln!(
                    "offline changes sent: {} ({} values discarded by merges: `crmsync status --conflicts`)",
                    r.played_back, r.conflicts
                );
            }
            for refused in &r.refused {
                eprintln!("offline change refused, the CRM's version kept: {refused}");
            }
        }
        Err(e) => eprintln!("offline copy: {e:#}"),
    }
}

/// How often `crmsync agent` with an offline copy checks that the CRM
/// server answers.
const OFFLINE_PROBE: std::time::Duration = std::time::Duration::from_secs(3);

/// `crmsync agent` with an offline copy: after each sync the copy is kept
/// (`keep_offline_copy`); while the CRM server cannot be reached (a failed
/// sync, or a probe every few seconds) the copy is served at `listen`, and
/// once the server answers again it stops being served and what was
/// changed there is played back.
async fn run_with_offline_copy(
    agent: &crmsync_agent::Agent,
    listen: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let (synced, mut outcomes) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let running = crmsync_agent::run::run(agent, shutdown_signal(), |result| {
        log_sync(result);
        let _ = synced.send(result.is_ok());
    });
    let offline = async {
        let path = offline::replica_path(&agent.config().cache);
        let mut copy = offline::OfflineCopy::at(path.clone());
        let mut serving: Option<tokio::sync::oneshot::Sender<()>> = None;
        let mut probe = tokio::time::interval(OFFLINE_PROBE);
        loop {
            // (the server answers, a sync just ended)
            let (reachable, synced) = tokio::select! {
                outcome = outcomes.recv() => match outcome {
                    Some(ok) => (ok, true),
                    None => return,
                },
                _ = probe.tick() => {
                    let answers = agent.crm().request(reqwest::Method::GET, "/healthz", None).await;
                    (answers.is_ok(), false)
                }
            };
            if reachable {
                let was_serving = serving.take().map(|stop| stop.send(()).is_ok()).is_some();
                if was_serving {
                    eprintln!("crmsync agent: the CRM server answers again; the offline copy is no longer served");
                }
                if was_serving || synced {
                    keep_offline_copy(agent, &mut copy).await;
                }
            } else if serving.is_none() && path.exists() {
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let path = path.clone();
                tokio::spawn(async move {
                    let until = async {
                        let _ = stopped.await;
                    };
                    if let Err(e) = offline::serve(&path, listen, until).await {
                        eprintln!("offline copy: {e:#}");
                    }
                });
                serving = Some(stop);
            }
        }
    };
    let (result, ()) = tokio::join!(running, offline);
    result
}

fn log_sync(result: &anyhow::Result<crmsync_agent::SyncReport>) {
    match result {
        Ok(r) => tracing::info!(written = r.written_to_mailbox, pushed = ?r.pushed, "synchronized"),
        Err(e) => eprintln!("sync failed, trying again later: {e:#}"),
    }
}

/// R-V4: the sync workers of `serve`, reaching the CRM through its own
/// listener; none without a secret key (no mailbox can be connected then).
async fn start_workers(
    store: &Store,
    db: &str,
    address: std::net::SocketAddr,
    count: Option<usize>,
    connections_per_host: usize,
) -> anyhow::Result<Option<crmsync_hosted::Workers>> {
    let count = count.unwrap_or(match store.kind {
        crmsync_server::db::DbKind::Postgres => 4,
        crmsync_server::db::DbKind::Sqlite => 1,
    });
    if count == 0 || store.secret_key.is_none() {
        return Ok(None);
    }
    let host = if address.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), address.port())
    } else {
        address
    };
    let settings = crmsync_hosted::WorkerSettings {
        count,
        crm_url: format!("http://{host}"),
        cache_dir: crmsync_server::db::beside_sqlite(db, "mailbox-caches")
            .unwrap_or_else(|| std::env::temp_dir().join("crmsync-mailbox-spool")),
        holder: format!("pid {}", std::process::id()),
        connections_per_host,
    };
    Ok(Some(
        crmsync_hosted::start_workers(store.clone(), settings).await?,
    ))
}

/// `crmsync up`: the first run creates the organization, a user, the token
/// file, the agent configuration and the mailbox folder; every run starts
/// the server and the agent together.
async fn up(dir: &std::path::Path, listen: &str) -> anyhow::Result<()> {
    let dir = std::path::absolute(dir)
        .with_context(|| format!("--dir {}: not a usable path", dir.display()))?;
    let (db, token_file, config, mailbox) = (
        dir.join("crm.db"),
        dir.join("token"),
        dir.join("agent.toml"),
        dir.join("mailbox"),
    );
    std::fs::create_dir_all(&mailbox)
        .with_context(|| format!("cannot create {}", mailbox.display()))?;
    let store = Store::connect(&format!("sqlite://{}", db.display())).await?;
    if store.organization().await?.is_none() {
        let user = std::env::var("USER").unwrap_or_else(|_| "me".into());
        let token =
            crmsync_server::records::init_organization(&store, &format!("{user}@localhost"), &user)
                .await?;
        write_private(&token_file, &token)?;
        let toml = format!(
            "[crm]\nurl = \"http://{listen}\"\ntoken_file = {token:?}\n\n[client]\nname = \"up\"\ncache = {cache:?}\n\n[mailbox.local]\nroot = {root:?}\n\n[sync]\ninterval = \"5m\"\n",
            token = token_file.display().to_string(),
            cache = dir.join("cache.db").display().to_string(),
            root = mailbox.display().to_string(),
        );
        std::fs::write(&config, toml)
            .with_context(|| format!("cannot write {}", config.display()))?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot listen there (in use, or not an address of this machine)"))?;
    let address = listener.local_addr()?;
    let signin = up_signin_link(&store, &token_file).await?;
    tokio::spawn(async move {
        if let Err(e) = crmsync_server::serve(
            store,
            listener,
            crmsync_server::DEFAULT_MAX_BODY,
            std::future::pending(),
        )
        .await
        {
            eprintln!("error: the server stopped: {e:#}");
        }
    });
    println!("CRM server:  http://{address}");
    println!("sign in:     http://{address}/signin/link/{signin}  (works once, for 10 minutes)");
    println!("token file:  {}", token_file.display());
    println!("mailbox:     {}", mailbox.display());
    println!("agent config: {}", config.display());
    let agent = open_agent(&config).await?;
    crmsync_agent::run::run(&agent, shutdown_signal(), log_sync).await
}

/// A one-time sign-in link's token for the user of `up` (the owner of the
/// token file), so that a first run is one click away from the browser.
async fn up_signin_link(store: &Store, token_file: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?;
    let user = store
        .user_by_token(&crmsync_server::auth::hash_token(token.trim()))
        .await?
        .with_context(|| {
            format!(
                "the token in {} is not a user's token any more; move the folder away to start afresh",
                token_file.display()
            )
        })?;
    Ok(crmsync_server::web::session::create_link(store, user.id).await?)
}

/// R-V2: `admin init` makes the secret key beside a SQLite database, where
/// `serve` finds it (a key already there is kept). A PostgreSQL server is
/// elsewhere: its key is made with `gen-key`.
fn key_beside_database(db: &str) -> anyhow::Result<()> {
    match crmsync_server::secrets::key_file_beside(db) {
        Some(path) if path.exists() => Ok(()),
        Some(path) => {
            let key = crmsync_server::secrets::SecretKey::create_file(&path)?;
            eprintln!(
                "wrote secret key {} to {}: it encrypts connected mailboxes' passwords; back it up with the database, apart from it",
                key.id(),
                path.display()
            );
            Ok(())
        }
        None => {
            eprintln!("to connect mailboxes to this server, make a secret key with `crmsync admin gen-key FILE` and start `crmsync serve` with --secret-key-file FILE");
            Ok(())
        }
    }
}

/// Writes a secret readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{text}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

async fn open_agent(config: &std::path::Path) -> anyhow::Result<crmsync_agent::Agent> {
    let cfg = crmsync_agent::Config::load(config).map_err(|e| BadUsage(e.to_string()))?;
    let agent = crmsync_agent::Agent::open(cfg).await?;
    show_progress(&agent);
    Ok(agent)
}

/// SPEC §12: long work shows progress on a terminal and stays quiet when
/// the output is not one. One bar per phase, drawn on stderr.
fn show_progress(agent: &crmsync_agent::Agent) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return;
    }
    let bar = indicatif::ProgressBar::hidden();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:40} {wide_bar} {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let phase = std::sync::Mutex::new("");
    agent.on_progress(Box::new(move |p| {
        // Small batches finish before a bar would help.
        if p.total < 200 {
            return;
        }
        let mut current = phase.lock().unwrap_or_else(|e| e.into_inner());
        if *current != p.phase {
            *current = p.phase;
            bar.reset();
            bar.set_message(p.phase);
            bar.set_length(p.total);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        bar.set_position(p.done);
        if p.done >= p.total {
            bar.finish_and_clear();
        }
    }));
}

fn print_sync(report: &crmsync_agent::SyncReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        let pushed: Vec<String> = report
            .pushed
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "synchronized (client {}, {}): {} written to the mailbox, {} deleted, {} unlinked; pushed to the CRM: {}",
            report.client_id,
            report.role,
            report.written_to_mailbox,
            report.deleted_from_mailbox,
            report.unlinked_in_mailbox,
            if pushed.is_empty() { "nothing".to_string() } else { pushed.join(", ") }
        );
        if report.left_for_primary > 0 {
            println!(
                "{} change(s) wait for the primary client (`crmsync client set-primary` moves the role)",
                report.left_for_primary
            );
        }
        for line in report.refused.iter().chain(&report.reported) {
            println!("{line}");
        }
    }
    if !report.skipped.is_empty() {
        eprintln!(
            "warning: {} item(s) cannot be read and were skipped (fix or remove them; they are read again when they change, and `crmsync status` lists them):",
            report.skipped.len()
        );
        for line in &report.skipped {
            eprintln!("  {line}");
        }
    }
    if let Some(why) = &report.mass_delete {
        eprintln!("held back {} deletion(s): {why}", report.held_deletions);
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
    // SPEC §12: 0 success (skipped items are warnings), 1 failure.
    if !report.completed() {
        anyhow::bail!(
            "the sync did not complete: the changes above were not made and are tried again at the next sync"
        );
    }
    Ok(())
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create the organization and its first admin; prints the admin's token.
    Init {
        #[command(flatten)]
        db: Db,
        #[arg(long)]
        email: String,
        #[arg(long, default_value = "Administrator")]
        name: String,
    },
    /// Users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Write the whole organization to FILE as JSON Lines (R-O2).
    Export {
        #[command(flatten)]
        db: Db,
        file: PathBuf,
    },
    /// Load an export into an empty database, keeping every id (R-O2).
    Import {
        #[command(flatten)]
        db: Db,
        file: PathBuf,
    },
    /// Write a new secret key to FILE (readable by you only; never overwrites).
    GenKey { file: PathBuf },
    /// Re-encrypt every stored secret under a new key, in one transaction;
    /// then start `serve` with the new key.
    RotateKey {
        #[command(flatten)]
        db: Db,
        #[command(flatten)]
        key: KeyFile,
        /// The new key (`crmsync admin gen-key FILE` makes one).
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user; prints the user's token.
    Add {
        #[command(flatten)]
        db: Db,
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
        /// Make the user an admin.
        #[arg(long)]
        admin: bool,
    },
    /// Set a user's password for the web sign-in: read from standard
    /// input, or prompted (twice, without echo) on a terminal.
    Passwd {
        #[command(flatten)]
        db: Db,
        #[arg(long)]
        email: String,
    },
}

/// The new password: prompted without echo on a terminal, else the first
/// line of standard input.
fn read_new_password(email: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {email}: "))?;
        let again = rpassword::prompt_password("Repeat it: ")?;
        if first != again {
            anyhow::bail!("the two passwords differ; nothing was changed, run the command again");
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        anyhow::bail!("no password on standard input; pipe one in (echo 'secret' | crmsync admin user passwd ...) or run the command on a terminal");
    }
    Ok(password)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            db,
            listen,
            max_body,
            key,
            sync_workers,
            sync_connections_per_host,
        } => {
            let mut store = Store::connect(&db.db)
                .await?
                .with_connection_test(std::sync::Arc::new(crmsync_hosted::MailboxTester));
            match key.find(&db.db)? {
                Some(key) => store = store.with_secret_key(key),
                None => eprintln!(
                    "crmsync serve: no secret key, so mailboxes cannot be connected to this server; make one with `crmsync admin gen-key FILE` and pass --secret-key-file FILE"
                ),
            }
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("--listen {listen}: cannot listen there (in use, or not an address of this machine)"))?;
            tracing::info!("crmsync server on http://{}", listener.local_addr()?);
            eprintln!(
                "crmsync server listening on http://{}",
                listener.local_addr()?
            );
            let _workers = start_workers(
                &store,
                &db.db,
                listener.local_addr()?,
                sync_workers,
                sync_connections_per_host as usize,
            )
            .await?;
            crmsync_server::serve(store, listener, max_body, shutdown_signal()).await
        }
        Command::Agent { config } => {
            let agent = open_agent(&config).await?;
            eprintln!(
                "crmsync agent: synchronizing {} every {:?} and on mailbox changes; Ctrl-C stops",
                config.display(),
                agent.config().interval
            );
            match agent.config().offline {
                None => crmsync_agent::run::run(&agent, shutdown_signal(), log_sync).await,
                Some(listen) => run_with_offline_copy(&agent, listen).await,
            }
        }
        Command::Offline { config } => {
            let cfg = crmsync_agent::Config::load(&config).map_err(|e| BadUsage(e.to_string()))?;
            let Some(listen) = cfg.offline else {
                return Err(BadUsage(format!(
                    "{}: the offline copy is not enabled; add [offline] enabled = true and run `crmsync sync` once while the CRM server can be reached",
                    config.display()
                ))
                .into());
            };
            offline::serve(
                &offline::replica_path(&cfg.cache),
                listen,
                shutdown_signal(),
            )
            .await
        }
        Command::Up { dir, listen } => up(&dir, &listen).await,
        Command::Sync {
            config,
            json,
            allow_mass_delete,
        } => {
            let agent = open_agent(&config).await?;
            let report = agent
                .sync_once(crmsync_agent::SyncOptions {
                    allow_mass_delete,
                    ..Default::default()
                })
                .await?;
            print_sync(&report, json)?;
            if agent.config().offline.is_some() {
                let path = offline::replica_path(&agent.config().cache);
                keep_offline_copy(&agent, &mut offline::OfflineCopy::at(path)).await;
            }
            Ok(())
        }
        c @ (Command::Status {
            conflicts: true, ..
        }
        | Command::Status { item: Some(_), .. }
        | Command::Track { .. }
        | Command::Untrack { .. }
        | Command::Regarding { .. }
        | Command::Explain { .. }
        | Command::Client { .. }) => run_command(c).await.map_err(usage_exit),
        Command::Status { config, json, .. } => {
            let agent = open_agent(&config).await?;
            let s = agent.status().await?;
            let replica = match agent.config().offline {
                Some(_) => offline::status(&offline::replica_path(&agent.config().cache)).await?,
                None => None,
            };
            if json {
                let mut out = serde_json::to_value(&s)?;
                out["offline"] = match &replica {
                    Some(r) => {
                        serde_json::json!({"records": r.records, "bytes": r.bytes, "changes_waiting": r.waiting})
                    }
                    None => serde_json::Value::Null,
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                if let Some(r) = &replica {
                    println!(
                        "offline copy: {} records, {:.1} MB, {} changes waiting to be sent",
                        r.records,
                        r.bytes as f64 / 1e6,
                        r.waiting
                    );
                }
                println!(
                    "client: {}\nnot tracked (0): {}\nto be tracked (1): {}\ntracked (2): {}\npending operations: {}",
                    s.client_id.as_deref().unwrap_or("(not registered yet; run `crmsync sync`)"),
                    s.not_tracked,
                    s.to_be_tracked,
                    s.tracked,
                    s.pending_operations
                );
                if !s.kinds_not_synchronized.is_empty() {
                    println!(
                        "not synchronized (the [mailbox] section has no collection for them): {}",
                        s.kinds_not_synchronized.join(", ")
                    );
                }
                if !s.reported.is_empty() {
                    println!("needs your attention:");
                    for line in &s.reported {
                        println!("  {line}");
                    }
                }
            }
            Ok(())
        }
        Command::Admin { command } => match command {
            AdminCommand::Init { db, email, name } => {
                let store = Store::connect(&db.db).await?;
                let token =
                    crmsync_server::records::init_organization(&store, &email, &name).await?;
                println!("{token}");
                key_beside_database(&db.db)
            }
            AdminCommand::GenKey { file } => {
                let key = crmsync_server::secrets::SecretKey::create_file(&file)?;
                eprintln!(
                    "wrote secret key {} to {}; start `crmsync serve` with --secret-key-file {} and keep a copy somewhere safe: without it, stored mailbox passwords cannot be read",
                    key.id(),
                    file.display(),
                    file.display()
                );
                Ok(())
            }
            AdminCommand::RotateKey {
                db,
                key,
                new_key_file,
            } => {
                let old = key.find(&db.db)?.ok_or_else(|| {
                    BadUsage("no key in use was found: name it with --secret-key-file FILE".into())
                })?;
                let new = crmsync_server::secrets::SecretKey::load(&new_key_file)?;
                let store = Store::connect(&db.db).await?;
                let n = crmsync_server::mailboxes::rotate_key(&store, &old, &new).await?;
                eprintln!(
                    "re-encrypted {n} secret(s) from key {} to key {}; start `crmsync serve` with --secret-key-file {} (the old key opens nothing now)",
                    old.id(),
                    new.id(),
                    new_key_file.display()
                );
                Ok(())
            }
            AdminCommand::User {
                command:
                    UserCommand::Add {
                        db,
                        email,
                        name,
                        admin,
                    },
            } => {
                let store = Store::connect(&db.db).await?;
                println!(
                    "{}",
                    crmsync_server::records::add_user(&store, &email, &name, admin).await?
                );
                Ok(())
            }
            AdminCommand::User {
                command: UserCommand::Passwd { db, email },
            } => {
                let password = read_new_password(&email)?;
                let store = Store::connect(&db.db).await?;
                crmsync_server::passwords::set_password(&store, &email, &password).await?;
                eprintln!("password set for {email}; sign in at the server's address with it");
                Ok(())
            }
            AdminCommand::Export { db, file } => {
                let store = Store::connect(&db.db).await?;
                let out = std::fs::File::create(&file)
                    .with_context(|| format!("cannot create {}", file.display()))?;
                let n = crmsync_server::export::export(&store, &mut BufWriter::new(out)).await?;
                eprintln!("exported {n} lines to {}", file.display());
                Ok(())
            }
            AdminCommand::Import { db, file } => {
                let store = Store::connect(&db.db).await?;
                let input = std::fs::File::open(&file)
                    .with_context(|| format!("cannot open {}", file.display()))?;
                let n = crmsync_server::export::import(&store, BufReader::new(input)).await?;
                eprintln!("imported {n} lines from {}", file.display());
                Ok(())
            }
        },
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CRMSYNC_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<BadUsage>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
