-- Columns that are NULL in most rows are indexed only where they hold a value: every query
-- that uses these indexes compares the column with `=`, which implies the index's condition,
-- so the same plans serve; and a row without a value (an audit event about no patient, a
-- backend-services family without a user) no longer adds an index entry, which is one B-tree
-- write less on the token endpoint's hot inserts. Same names, same meaning: older binaries
-- run unchanged against this schema.
--
-- (Not `audit_events.chain_seq`: the audit linker finds the events still to link through the
-- NULL entries of that index; without them SQLite walks every recent event instead. And not on
-- PostgreSQL: see the migration of the same name there.)
DROP INDEX audit_events_patient;
CREATE INDEX audit_events_patient ON audit_events (target_patient) WHERE target_patient IS NOT NULL;
DROP INDEX token_families_user;
CREATE INDEX token_families_user ON token_families (user_id) WHERE user_id IS NOT NULL;
