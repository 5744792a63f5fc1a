-- Login, second factors and sessions (DESIGN.md §7). Expand only: new columns are nullable or
-- defaulted, so the previous release keeps working against this schema.
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN password_changed_at BIGINT;
ALTER TABLE users ADD COLUMN failed_logins BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_at BIGINT;

-- TOTP seeds sealed under the master key (AAD: this row). last_step is the RFC 6238 step of the
-- last accepted code: a code of that step or earlier is a replay.
CREATE TABLE totp_credentials (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_sealed TEXT NOT NULL,
    confirmed BOOLEAN NOT NULL,
    last_step BIGINT,
    -- While unconfirmed: the session (id hash) that started the enrolment; only it may finish.
    pending_session TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX totp_credentials_user ON totp_credentials (user_id);

-- Single-use recovery codes, SHA-256 of high-entropy randoms.
CREATE TABLE recovery_codes (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX recovery_codes_user ON recovery_codes (user_id);

-- Server-side sessions. The cookie holds a random id; only its SHA-256 is stored. public_id
-- names a session on the account page without revealing anything usable.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    public_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    stage TEXT NOT NULL,
    amr TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    authenticated_at BIGINT NOT NULL,
    mfa_at BIGINT,
    source_ip TEXT,
    user_agent TEXT,
    ended_at BIGINT,
    end_reason TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Failed-attempt counters for back-off, per (purpose, account, client IP) key (hashed). Shared by
-- every node through the database.
CREATE TABLE auth_throttle (
    key_hash TEXT PRIMARY KEY NOT NULL,
    failures BIGINT NOT NULL,
    last_failure_at BIGINT NOT NULL
);
