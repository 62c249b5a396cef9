-- R-W6: each sync client's last synchronization as the server saw it:
-- when it last prepared, when a prepare last delivered a batch, and when
-- it last acknowledged deliveries and how many. Exported with the rest of sync_clients (docs/export.md).
ALTER TABLE sync_clients ADD COLUMN last_sync_at TEXT;
ALTER TABLE sync_clients ADD COLUMN last_batch_at TEXT;
ALTER TABLE sync_clients ADD COLUMN last_ack_at TEXT;
ALTER TABLE sync_clients ADD COLUMN last_ack_items BIGINT;
