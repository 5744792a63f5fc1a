-- One-time enrolment links: an admin creates a user without choosing their password; the user
-- follows the link once, before it expires, and sets it. Only the SHA-256 of the link's
-- 256-bit token is stored.
CREATE TABLE enrolment_links (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX enrolment_links_user ON enrolment_links (user_id);
CREATE INDEX enrolment_links_expiry ON enrolment_links (expires_at);
