DROP TABLE audit_chain_state;
DROP INDEX audit_events_unlinked;
DROP INDEX audit_events_chain_seq;
ALTER TABLE audit_events DROP COLUMN chain_hash;
ALTER TABLE audit_events DROP COLUMN chain_seq;
