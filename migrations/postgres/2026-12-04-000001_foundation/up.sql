-- Signing keys: private halves sealed under the master key (AES-256-GCM, AAD = row).
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY NOT NULL,
    alg TEXT NOT NULL,
    key_use TEXT NOT NULL,
    public_jwk TEXT NOT NULL,
    private_jwk_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    activates_at BIGINT NOT NULL
);
CREATE INDEX signing_keys_alg_activates ON signing_keys (alg, activates_at);

-- The audit trail: append-only. No code path updates or deletes these rows.
CREATE TABLE audit_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at BIGINT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    severity TEXT NOT NULL,
    actor_user TEXT,
    actor_client TEXT,
    source_ip TEXT,
    user_agent TEXT,
    request_id TEXT,
    target_patient TEXT,
    node TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX audit_events_occurred ON audit_events (occurred_at);
CREATE INDEX audit_events_patient ON audit_events (target_patient);
