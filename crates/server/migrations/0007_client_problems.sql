-- R-W6: the items a client's mailbox holds that cannot be read, as the
-- client last reported them (`PUT /api/v1/sync/clients/{id}/problems`): a
-- JSON list of {"item", "problem"}, the problem saying the fix. Exported
-- with the rest of sync_clients (docs/export.md).
ALTER TABLE sync_clients ADD COLUMN problems TEXT;
