-- The tamper-evident chain over the audit trail (DESIGN.md §8). Events are inserted in their
-- action's transaction with both columns empty; a linker on one node at a time gives each, in
-- commit order, the next sequence number and a keyed hash over its content and the previous
-- hash. Linking is the only write an event ever receives after its insert. Expand only.
ALTER TABLE audit_events ADD COLUMN chain_seq BIGINT;
ALTER TABLE audit_events ADD COLUMN chain_hash TEXT;
CREATE UNIQUE INDEX audit_events_chain_seq ON audit_events (chain_seq);
-- The linker's work list: only the few unlinked rows.
CREATE INDEX audit_events_unlinked ON audit_events (id) WHERE chain_seq IS NULL;
