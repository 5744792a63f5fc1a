ALTER TABLE audit_events DROP COLUMN chain_key_id;
