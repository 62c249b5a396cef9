//! crmsync core: records, field definitions, validation, settings, filters
//! and field rules. Pure logic: nothing here does I/O.

pub mod email;
pub mod entity;
pub mod field;
pub mod field_rules;
pub mod filter;
pub mod kind;
pub mod mapping;
pub mod mass_delete;
pub mod merge;
pub mod plan;
pub mod record;
pub mod recurrence;
pub mod settings;
pub mod sync_rules;
pub mod time;

pub use entity::EntitySet;
pub use record::{InvalidRecord, Record, RecordInput};

/// R-W6: the most unreadable items a sync client reports to the server for
/// the Sync page (a list for reading, not a log); the server refuses more.
pub const MAX_REPORTED_PROBLEMS: usize = 1000;
