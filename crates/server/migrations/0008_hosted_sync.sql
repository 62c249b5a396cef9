-- R-V5: a change of a mailbox's connection settings (a PATCH with new
-- sections, e.g. a new password) counts up `settings_generation`. A claim
-- remembers the generation it started with, and the cycle's end writes
-- its state, error and next run only when no such change came meanwhile:
-- a cycle failing on the old password must not mark the new one
-- `needs_reconnect`. Runtime state, not exported (an import starts at 0).
ALTER TABLE mailboxes ADD COLUMN settings_generation BIGINT NOT NULL DEFAULT 0;

-- R-T7 for connected mailboxes: the clients whose mailbox holds a changed
-- record are found from the record (`lease::wake_mailboxes_of_changes`).
CREATE INDEX sync_entries_by_record ON sync_entries (record_id);
