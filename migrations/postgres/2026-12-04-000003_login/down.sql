DROP TABLE auth_throttle;
DROP TABLE sessions;
DROP TABLE recovery_codes;
DROP TABLE totp_credentials;
ALTER TABLE users DROP COLUMN locked_at;
ALTER TABLE users DROP COLUMN failed_logins;
ALTER TABLE users DROP COLUMN password_changed_at;
ALTER TABLE users DROP COLUMN password_hash;
