-- Sync protocol state (SPEC §3, §5). Portable SQL for SQLite and PostgreSQL.

-- R-C1..R-C5: clients. `user_id` runs the client; `mailbox_user_id` owns
-- the mailbox it works on (differs for a delegated client).
CREATE TABLE sync_clients (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    mailbox_user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    is_primary BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    -- Every change up to this version has been considered for this client.
    scanned_version BIGINT NOT NULL,
    -- 1: the next prepare evaluates the filters over all records (first
    -- sync, reset).
    full_scan BIGINT NOT NULL,
    -- When the time-relative conditions were last re-evaluated.
    time_checked_at TEXT NOT NULL,
    current_batch TEXT
);
-- The database holds "exactly one primary per mailbox user".
CREATE UNIQUE INDEX sync_clients_one_primary ON sync_clients (mailbox_user_id) WHERE is_primary = 1;
CREATE UNIQUE INDEX sync_clients_by_name ON sync_clients (user_id, mailbox_user_id, name);

-- R-S1: one entry per record the client's mailbox holds; `excluded` is the
-- R-S9 memory of records the user deleted in the mailbox.
CREATE TABLE sync_entries (
    client_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    entity_set TEXT NOT NULL,
    delivered_version BIGINT NOT NULL,
    manual BIGINT NOT NULL,
    excluded BIGINT NOT NULL,
    item_uid TEXT,
    PRIMARY KEY (client_id, record_id)
);
CREATE INDEX sync_entries_by_uid ON sync_entries (client_id, item_uid);

-- Records delivered in a batch but not yet acknowledged (R-S4): the next
-- prepare considers them again.
CREATE TABLE sync_pending (
    client_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    PRIMARY KEY (client_id, record_id)
);

CREATE TABLE sync_batches (
    id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    upto_version BIGINT NOT NULL
);
CREATE TABLE sync_batch_items (
    batch_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    record_id TEXT NOT NULL,
    entity_set TEXT NOT NULL,
    action TEXT NOT NULL,
    version BIGINT NOT NULL,
    removal TEXT,
    PRIMARY KEY (batch_id, seq)
);
CREATE INDEX sync_batch_items_by_record ON sync_batch_items (batch_id, record_id);

-- Push idempotency: the stored answer to each client operation id.
CREATE TABLE sync_ops (
    client_id TEXT NOT NULL,
    op_id TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (client_id, op_id)
);

-- R-F6: values discarded by merges.
CREATE TABLE sync_conflicts (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    entity_set TEXT NOT NULL,
    field TEXT NOT NULL,
    crm_value TEXT NOT NULL,
    mailbox_value TEXT NOT NULL,
    kept TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX sync_conflicts_by_user ON sync_conflicts (user_id, created_at);
CREATE INDEX sync_conflicts_by_record ON sync_conflicts (record_id);

-- Email addresses of contacts, leads, accounts and users, for resolving
-- parties (R-E8) and correlation without scanning records.
CREATE TABLE record_addresses (
    address TEXT NOT NULL,
    record_id TEXT NOT NULL,
    entity_set TEXT NOT NULL,
    PRIMARY KEY (address, record_id)
);
CREATE INDEX record_addresses_by_record ON record_addresses (record_id);

-- R-E2: an exception of a recurring series points to its series; the
-- series is delivered with its exceptions.
ALTER TABLE records ADD COLUMN parent_id TEXT;
CREATE INDEX records_by_parent ON records (parent_id);

-- Tracked email: the raw message as received (base64, kept unchanged),
-- and the keys that find it again (Message-ID per owner, tracking token).
CREATE TABLE email_messages (
    record_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    tracking_token TEXT NOT NULL,
    raw TEXT NOT NULL
);
CREATE INDEX email_messages_by_message_id ON email_messages (message_id, owner_id);
CREATE INDEX email_messages_by_token ON email_messages (tracking_token);
INSERT INTO sequence_counter (name, value) VALUES ('tracking_token', 0);
