-- SQLite only (see migrations/sqlite/2026-12-06-000011_partial_indexes): on PostgreSQL the
-- same change would rebuild indexes of audit_events, which is never purged, under an
-- ACCESS EXCLUSIVE lock inside the migration's transaction, stalling every node's token
-- endpoint during a rolling upgrade; and there the token endpoint is bound by round trips,
-- not by index writes. An operator who wants it runs CREATE INDEX CONCURRENTLY by hand.
SELECT 1;
