//! Embedded migrations, one folder per backend with identical names (a test keeps them in
//! step). Migrations are expand-then-contract (DESIGN.md §4): a release only adds; dropping
//! what the previous release still reads waits for a later release.
//!
//! On PostgreSQL the run holds a session advisory lock, so several nodes starting together
//! apply each migration exactly once; SQLite's write lock serialises the same way.

use diesel::connection::SimpleConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::{AdvisoryLock, DbConnection, StoreError};

const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Applies pending migrations and returns the versions applied (empty when up to date).
pub fn run_pending(conn: &mut DbConnection) -> Result<Vec<String>, StoreError> {
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Migration(e.to_string());
    match conn {
        DbConnection::Sqlite(c) => {
            let applied = c.run_pending_migrations(SQLITE).map_err(fail)?;
            Ok(applied.iter().map(|v| v.to_string()).collect())
        }
        DbConnection::Postgres(c) => {
            let lock = AdvisoryLock::Migrations as i64;
            c.batch_execute(&format!("SELECT pg_advisory_lock({lock})"))?;
            let result: Result<Vec<String>, StoreError> = c
                .run_pending_migrations(POSTGRES)
                .map(|applied| applied.iter().map(|v| v.to_string()).collect())
                .map_err(fail);
            let unlocked = c.batch_execute(&format!("SELECT pg_advisory_unlock({lock})"));
            let applied = result?;
            unlocked?;
            Ok(applied)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    fn names(dir: &str) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("migration folder exists")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn both_backends_have_the_same_migrations() {
        let root = env!("CARGO_MANIFEST_DIR");
        let sqlite = names(&format!("{root}/migrations/sqlite"));
        let postgres = names(&format!("{root}/migrations/postgres"));
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, postgres, "migration folders drifted apart");
    }

    #[test]
    fn migrations_only_expand() {
        // Expand-then-contract: an `up.sql` may add, never drop or rename, except in a
        // migration whose name says it contracts (and only after a release stopped reading).
        let root = env!("CARGO_MANIFEST_DIR");
        for backend in ["sqlite", "postgres"] {
            for name in names(&format!("{root}/migrations/{backend}")) {
                let up =
                    std::fs::read_to_string(format!("{root}/migrations/{backend}/{name}/up.sql"))
                        .expect("up.sql exists")
                        .to_uppercase();
                if name.contains("contract") {
                    continue;
                }
                for forbidden in ["DROP TABLE", "DROP COLUMN", "RENAME", "ALTER COLUMN"] {
                    assert!(
                        !up.contains(forbidden),
                        "{backend}/{name}/up.sql uses {forbidden}; split it into expand and contract"
                    );
                }
            }
        }
    }
}
