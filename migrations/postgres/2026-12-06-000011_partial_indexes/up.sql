-- Columns that are NULL in most rows are indexed only where they hold a value: every query
-- that uses these indexes compares the column with `=`, `>` or `IS NOT NULL`, which implies
-- the index's condition, so the same plans serve; and a row without a value (an audit event
-- about no patient or not yet linked into the chain, a backend-services family without a
-- user) no longer adds an index entry, which is one B-tree write less on the token endpoint's
-- hot inserts. Same names, same meaning: older binaries run unchanged against this schema.
DROP INDEX audit_events_chain_seq;
CREATE UNIQUE INDEX audit_events_chain_seq ON audit_events (chain_seq) WHERE chain_seq IS NOT NULL;
DROP INDEX audit_events_patient;
CREATE INDEX audit_events_patient ON audit_events (target_patient) WHERE target_patient IS NOT NULL;
DROP INDEX token_families_user;
CREATE INDEX token_families_user ON token_families (user_id) WHERE user_id IS NOT NULL;
