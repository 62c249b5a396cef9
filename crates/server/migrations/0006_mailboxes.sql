-- Mailboxes connected to the server (SPEC §15). Portable SQL: runs
-- unchanged on SQLite and PostgreSQL.
--
-- One row per connected mailbox: its settings, its encrypted passwords,
-- the sync client it synchronizes as (R-V3), and its schedule and health
-- (R-V4, R-V5). The row is also the work queue's entry: workers claim it
-- in order of next_run_at.
CREATE TABLE mailboxes (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    -- The `imap` and `dav` sections as given (SPEC §13's keys), without
    -- their passwords: JSON.
    settings TEXT NOT NULL,
    -- R-V2: the sections' passwords, encrypted: `v1:<key id>:<nonce>:<data>`.
    secret TEXT NOT NULL,
    client_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    modified_at TEXT NOT NULL,
    -- active | failing | needs_reconnect | disabled
    state TEXT NOT NULL,
    -- Unix seconds, so that "due" and "expired" are integer comparisons.
    next_run_at BIGINT NOT NULL,
    -- R-V4: the lease. The token increases at every claim and fences the
    -- cycle's writes.
    lease_token BIGINT NOT NULL,
    lease_holder TEXT,
    lease_expires_at BIGINT,
    last_success_at TEXT,
    -- The last error, with its fix, as people read it.
    last_error TEXT,
    -- The last cycle's counts (JSON).
    last_counts TEXT,
    -- Transient failures in a row (R-V5's backoff).
    failures BIGINT NOT NULL
);
CREATE UNIQUE INDEX mailboxes_by_client ON mailboxes (client_id);
CREATE INDEX mailboxes_by_user ON mailboxes (user_id, name);
CREATE INDEX mailboxes_by_next_run ON mailboxes (next_run_at);
