-- The client registry, users and roles: who may ask for what (DESIGN.md §6).
-- Lists (redirect URIs, FHIR bases, grant types, launch modes) are JSON arrays of strings: they
-- are always read with their client and never queried on their own.
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    redirect_uris TEXT NOT NULL,
    fhir_bases TEXT NOT NULL,
    grant_types TEXT NOT NULL,
    launch_modes TEXT NOT NULL,
    allowed_scopes TEXT NOT NULL,
    ehr_launcher BOOLEAN NOT NULL,
    ai_tool BOOLEAN NOT NULL,
    access_token_lifetime BIGINT NOT NULL,
    refresh_token_idle_lifetime BIGINT NOT NULL,
    refresh_token_absolute_lifetime BIGINT NOT NULL,
    logo_uri TEXT,
    contact TEXT,
    jwks TEXT,
    jwks_uri TEXT,
    enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);

-- Only SHA-256 hashes of server-generated 256-bit secrets. A rotated-out secret keeps working
-- until expires_at (the grace period); the current one has no expiry.
CREATE TABLE client_secrets (
    id TEXT PRIMARY KEY NOT NULL,
    client_id TEXT NOT NULL REFERENCES clients (client_id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX client_secrets_client ON client_secrets (client_id);

CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    fhir_user TEXT,
    enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);

CREATE TABLE roles (
    name TEXT PRIMARY KEY NOT NULL,
    description TEXT NOT NULL,
    scope_ceiling TEXT NOT NULL,
    mfa_required BOOLEAN NOT NULL,
    break_glass BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL
);

CREATE TABLE user_roles (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role_name TEXT NOT NULL REFERENCES roles (name),
    PRIMARY KEY (user_id, role_name)
);
CREATE INDEX user_roles_role ON user_roles (role_name);

-- Default roles, seeded once (README: "Default roles"). Admins may change or delete them.
INSERT INTO roles (name, description, scope_ceiling, mfa_required, break_glass, created_at, updated_at, version) VALUES
  ('admin', 'Administers Ward: clients, users, roles, keys, audit. No clinical data by itself.', '', TRUE, FALSE, 0, 0, 1),
  ('physician', 'Full clinical access to the records of patients in their care.', 'user/*.cruds', TRUE, TRUE, 0, 0, 1),
  ('nurse', 'Reads the chart; records observations, medication administration and notes.', 'user/*.rs user/Observation.cu user/MedicationAdministration.cu user/DocumentReference.c', TRUE, TRUE, 0, 0, 1),
  ('billing', 'Billing and claims: demographics, coverage, claims, accounts.', 'user/Patient.r user/Coverage.rs user/Claim.rs user/ExplanationOfBenefit.rs user/Account.rs', TRUE, FALSE, 0, 0, 1),
  ('front-desk', 'Registration and scheduling.', 'user/Patient.crus user/Coverage.rs user/Appointment.cruds user/Schedule.rs user/Slot.rs', TRUE, FALSE, 0, 0, 1),
  ('patient', 'A patient reading their own record.', 'patient/*.rs', FALSE, FALSE, 0, 0, 1);
