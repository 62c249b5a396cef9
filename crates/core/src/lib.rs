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
