-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

-- The organization this database holds (one per database).
CREATE TABLE organization (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- One organization-wide monotonic sequence. Writers take the row lock by
-- updating it first, so versions commit in order and "changes since V"
-- never skips a version that commits late.
CREATE TABLE sequence_counter (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO sequence_counter (name, value) VALUES ('version', 0);

-- Every record of every entity set; a delete keeps the row as a tombstone
-- (deleted_at set, data emptied) so that changes and deletions since a
-- version are one indexed range scan.
CREATE TABLE records (
    id TEXT PRIMARY KEY,
    entity_set TEXT NOT NULL,
    version BIGINT NOT NULL,
    owner_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    deleted_at TEXT,
    unique_key TEXT,
    search_text TEXT NOT NULL,
    data TEXT NOT NULL
);
-- Covering index for "changes since V".
CREATE UNIQUE INDEX records_by_version ON records (version, entity_set, id, deleted_at);
CREATE INDEX records_by_set ON records (entity_set, version);
CREATE INDEX records_by_set_owner ON records (entity_set, owner_id, version);
-- Natural keys that must stay unique among live records (a user's email).
CREATE UNIQUE INDEX records_by_unique_key ON records (unique_key);

-- API tokens, stored only as SHA-256 hashes.
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX tokens_by_user ON tokens (user_id);

-- Settings, sync filters, sync-field directions and field-security rules:
-- small JSON documents, validated by crmsync-core before they are stored.
CREATE TABLE config (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
