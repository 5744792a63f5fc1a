DROP INDEX audit_events_chain_seq;
CREATE UNIQUE INDEX audit_events_chain_seq ON audit_events (chain_seq);
DROP INDEX audit_events_patient;
CREATE INDEX audit_events_patient ON audit_events (target_patient);
DROP INDEX token_families_user;
CREATE INDEX token_families_user ON token_families (user_id);
