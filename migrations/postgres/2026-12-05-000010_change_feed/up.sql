-- The change feed (src/store/changes.rs). On PostgreSQL changes travel by NOTIFY on the
-- `ward_changes` channel, delivered at commit; this table keeps both schemas identical.
CREATE TABLE changes (
    id BIGSERIAL PRIMARY KEY,
    change TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
