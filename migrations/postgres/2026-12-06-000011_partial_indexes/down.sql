DROP INDEX audit_events_patient;
CREATE INDEX audit_events_patient ON audit_events (target_patient);
DROP INDEX token_families_user;
CREATE INDEX token_families_user ON token_families (user_id);
