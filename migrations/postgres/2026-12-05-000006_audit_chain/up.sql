-- The tamper-evident chain over the audit trail (DESIGN.md §8). Events are inserted in their
-- action's transaction with both columns empty; a linker on one node at a time gives each, in
-- commit order, the next sequence number and a keyed hash over its content and the previous
-- hash. Linking is the only write an event ever receives after its insert. Expand only.
ALTER TABLE audit_events ADD COLUMN chain_seq BIGINT;
ALTER TABLE audit_events ADD COLUMN chain_hash TEXT;
CREATE UNIQUE INDEX audit_events_chain_seq ON audit_events (chain_seq);
-- The linker's work list: only the few unlinked rows.
CREATE INDEX audit_events_unlinked ON audit_events (id) WHERE chain_seq IS NULL;
-- Events written before the chain existed are linked once, whatever their age; after that,
-- only fresh events are (an old unlinked row is reported, not blessed).
CREATE TABLE audit_chain_state (
    id BIGINT PRIMARY KEY NOT NULL,
    legacy_max_event_id BIGINT NOT NULL
);
INSERT INTO audit_chain_state (id, legacy_max_event_id)
    SELECT 1, COALESCE(MAX(id), 0) FROM audit_events;
