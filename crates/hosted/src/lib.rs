//! Server-side synchronization (SPEC §15): what connects a mailbox the
//! server holds to its mail and DAV servers. The server crate owns the
//! mailboxes' rows, API and leases; this crate brings the mail backends
//! and the agent's engine to them.

pub mod sweep;
mod test;
mod worker;

pub use test::MailboxTester;
pub use worker::{start as start_workers, WorkerSettings, Workers, DEFAULT_CONNECTIONS_PER_HOST};
