//! The server side of the sync protocol (SPEC §3, §5, §6, §7, §9):
//! clients, prepare/data/ack, push with merging (and the playback of an
//! offline replica's edits, R-O1), conflicts, explain, and
//! the long poll that tells running clients of CRM changes (R-T7).

pub mod clients;
pub mod context;
pub mod email;
pub mod filter_sql;
pub mod prepare;
pub mod push;
mod push_offline;
pub mod report;
pub mod store;
pub mod wait;
