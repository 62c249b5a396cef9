//! The `crmsync` command (SPEC §12). Exit status: 0 success, 1 failure,
//! 2 bad usage.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use crmsync_server::Store;

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
    },
    /// Organization administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
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
        } => {
            let store = Store::connect(&db.db).await?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("--listen {listen}: cannot listen there (in use, or not an address of this machine)"))?;
            tracing::info!("crmsync server on http://{}", listener.local_addr()?);
            eprintln!(
                "crmsync server listening on http://{}",
                listener.local_addr()?
            );
            crmsync_server::serve(store, listener, max_body, shutdown_signal()).await
        }
        Command::Admin { command } => match command {
            AdminCommand::Init { db, email, name } => {
                let store = Store::connect(&db.db).await?;
                let token =
                    crmsync_server::records::init_organization(&store, &email, &name).await?;
                println!("{token}");
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
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
