-- The web interface's sign-in (SPEC §14, R-W2). Portable SQL: runs
-- unchanged on SQLite and PostgreSQL. Times are Unix seconds (BIGINT) so
-- that expiry is one integer comparison on both databases.

-- A user's password for the web sign-in, as an Argon2id PHC string
-- (`crmsync admin user passwd`). Exported (R-O2): users keep signing in.
CREATE TABLE user_passwords (
    user_id TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    set_at TEXT NOT NULL
);

-- Signed-in browsers: the cookie's random token is stored only as its
-- SHA-256, with the synchronizer CSRF token of the session's forms.
-- Not exported: a move signs everyone out.
CREATE TABLE web_sessions (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX web_sessions_by_user ON web_sessions (user_id);

-- One-time sign-in links (`crmsync up`): used once, within 10 minutes.
-- Not exported.
CREATE TABLE signin_links (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Recent failed sign-ins per account (lower-cased email), shared by every
-- server process on the database, to slow down password guessing.
-- Not exported.
CREATE TABLE signin_failures (
    email TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    last_failure_at BIGINT NOT NULL
);

-- What an activity or email points to (its regarding, and the records its
-- attendees or parties resolved to), so that a record's timeline is one
-- index range, whatever the organization holds. Derived from the records
-- (kept in step by every write, rebuilt on import); not exported.
CREATE TABLE record_links (
    target_id TEXT NOT NULL,
    record_id TEXT NOT NULL,
    PRIMARY KEY (target_id, record_id)
);
CREATE INDEX record_links_by_record ON record_links (record_id);
