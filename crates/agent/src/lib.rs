//! The crmsync sync agent (SPEC §3, §8, §9, §10, §13): its configuration,
//! its cache (a SQLite file, or a server's PostgreSQL database, R-V4), the
//! CRM sync API client, and the engine that runs one synchronization
//! between a mailbox and the CRM server.

pub mod backends;
pub mod cache;
pub mod commands;
pub mod config;
pub mod crm;
pub mod crm_watch;
pub mod engine;
pub mod fault;
pub mod mail;
pub mod run;

pub use config::Config;
pub use engine::{Agent, Progress, ProgressFn, StatusReport, SyncOptions, SyncReport};
