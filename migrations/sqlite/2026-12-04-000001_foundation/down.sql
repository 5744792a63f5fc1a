DROP TABLE audit_events;
DROP TABLE signing_keys;
