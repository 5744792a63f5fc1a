ALTER TABLE roles DROP COLUMN passwordless;
DROP TABLE webauthn_challenges;
DROP TABLE webauthn_credentials;
