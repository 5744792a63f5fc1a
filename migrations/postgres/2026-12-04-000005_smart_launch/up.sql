-- SMART App Launch (DESIGN.md §4, §5): the patient directory behind the standalone picker, EHR
-- launch contexts, pending authorization requests, codes, token families with their refresh and
-- access tokens, remembered consents and the client-assertion replay cache. Expand only.
-- Every secret value (launch ids, request ids, codes, refresh tokens) is stored as SHA-256.

-- Only what a picker needs (HIPAA minimum necessary): name, birth date, gender, identifiers.
CREATE TABLE patients (
    id TEXT PRIMARY KEY NOT NULL,
    family TEXT NOT NULL,
    given TEXT NOT NULL,
    birth_date TEXT,
    gender TEXT,
    identifiers TEXT NOT NULL,
    -- Lower-case, accent-free "given family" and "|value|value|" for search.
    search_name TEXT NOT NULL,
    search_identifiers TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX patients_birth_date ON patients (birth_date);

-- Contexts an EHR created with POST /launch: single use, for one app, maybe for one user.
CREATE TABLE launch_contexts (
    id_hash TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    created_by TEXT NOT NULL,
    user_id TEXT,
    context TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX launch_contexts_expires ON launch_contexts (expires_at);

-- A validated authorization request waiting for sign-in, a patient choice and consent.
-- offered: the patient ids the picker showed (only those may be chosen). user_id: the person
-- who first reached it signed in; nobody else may continue it.
CREATE TABLE auth_requests (
    id_hash TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    user_id TEXT,
    request TEXT NOT NULL,
    offered TEXT NOT NULL,
    patient TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX auth_requests_expires ON auth_requests (expires_at);

-- A family is everything issued from one grant: one code's tokens, or one client_credentials
-- request. Revoking the family revokes all of them.
CREATE TABLE token_families (
    id TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT,
    -- sessions.public_id for online_access: the refresh token ends with that session.
    session_id TEXT,
    grant_kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    aud TEXT NOT NULL,
    context TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    revoked_reason TEXT
);
CREATE INDEX token_families_client ON token_families (client_id);
CREATE INDEX token_families_user ON token_families (user_id);
CREATE INDEX token_families_expires ON token_families (expires_at);

CREATE TABLE authorization_codes (
    code_hash TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    redirect_uri TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    grant_details TEXT NOT NULL,
    family_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    redeemed_at BIGINT
);
CREATE INDEX authorization_codes_expires ON authorization_codes (expires_at);

-- used_at set when rotated: presenting it again is reuse.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    family_id TEXT NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Every access token by jti, so it can be revoked and accounted for.
CREATE TABLE access_tokens (
    jti TEXT PRIMARY KEY NOT NULL,
    family_id TEXT NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    user_id TEXT,
    scope TEXT NOT NULL,
    aud TEXT NOT NULL,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    -- When a resource server first introspected it (the `first` audit policy).
    introspected_at BIGINT
);
CREATE INDEX access_tokens_family ON access_tokens (family_id);
CREATE INDEX access_tokens_expires ON access_tokens (expires_at);

-- Remembered consent per user and app (revocable on the connected-apps page).
CREATE TABLE consents (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    aud TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- Client-assertion jtis seen, until the assertion expires: a second use is a replay.
CREATE TABLE assertion_jtis (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX assertion_jtis_expires ON assertion_jtis (expires_at);
