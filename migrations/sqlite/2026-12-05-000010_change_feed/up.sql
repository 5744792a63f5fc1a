-- The change feed (src/store/changes.rs): one row per committed change that can make a node's
-- in-memory caches stale (a revoked token or grant, an ended session, a changed user, client or
-- signing key). SQLite commits one writer at a time, so ids increase in commit order and every
-- node (and `ward serve` beside a CLI) reads the rows after the last id it saw. PostgreSQL uses
-- NOTIFY instead; the table exists there too so both schemas stay identical.
CREATE TABLE changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    change TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
