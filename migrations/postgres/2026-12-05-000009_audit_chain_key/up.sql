-- Which chain key (named by the id of the master key it derives from) made each link's hash,
-- so the master key can be rotated without breaking `ward audit verify`: each link is checked
-- with the key it names. Expand only: links made before this column existed, or by an older
-- binary still running during an upgrade, leave it empty and are checked with every key held.
ALTER TABLE audit_events ADD COLUMN chain_key_id TEXT;
