-- WebAuthn passkeys and security keys. `passkey` is webauthn-rs's serialised credential (public
-- key, counter, flags: nothing secret). `user_handle` is the WebAuthn user id the authenticator
-- returns in a passwordless sign-in.
CREATE TABLE webauthn_credentials (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_handle TEXT NOT NULL,
    name TEXT NOT NULL,
    passkey TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);
CREATE INDEX webauthn_credentials_handle ON webauthn_credentials (user_handle);

-- Ceremony state between the start and finish requests, shared by every node; single use.
CREATE TABLE webauthn_challenges (
    id TEXT PRIMARY KEY NOT NULL,
    purpose TEXT NOT NULL,
    user_id TEXT,
    bound_to TEXT NOT NULL,
    state TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX webauthn_challenges_expires ON webauthn_challenges (expires_at);

-- Whether holders of a role may sign in with a passkey alone (user verification required).
ALTER TABLE roles ADD COLUMN passwordless BOOLEAN NOT NULL DEFAULT TRUE;
