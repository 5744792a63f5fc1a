-- Facts about this installation. `demo`: the database was seeded by `ward serve --demo` (its
-- accounts have published passwords), with the demo's sealed client secrets.
CREATE TABLE ward_meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
