//! A PostgreSQL database created for one test and dropped after it, on the machine's server
//! (127.0.0.1:5432, user postgres, trust auth). Under `CI=true` an unreachable server fails
//! the test; elsewhere the test is skipped with a printed reason.

use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection};

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

fn admin_url() -> String {
    std::env::var("WARD_TEST_PG_ADMIN_URL").unwrap_or_else(|_| ADMIN_URL.to_string())
}

pub fn admin() -> Option<PgConnection> {
    match PgConnection::establish(&admin_url()) {
        Ok(conn) => Some(conn),
        Err(e) if super::in_ci() => panic!("PostgreSQL is required under CI=true: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: PostgreSQL not reachable at {}: {e}", admin_url());
            None
        }
    }
}

impl PgDatabase {
    pub fn create() -> Option<Self> {
        let mut admin = admin()?;
        let name = format!(
            "ward_test_{}",
            uuid::Uuid::new_v4()
                .simple()
                .to_string()
                .get(..16)
                .unwrap_or("x")
        );
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let base = admin_url();
        let (prefix, _) = base.rsplit_once('/').expect("admin url has a database");
        Some(Self {
            url: format!("{prefix}/{name}"),
            name,
        })
    }

    /// Refuse new connections and cut existing ones: the database "goes away".
    ///
    /// The refusal is committed before any backend is terminated, so nothing reconnects in
    /// between; `pg_terminate_backend` only signals, so each call waits (up to 5 s) for its
    /// backend to exit, and the loop ends once none is left: when this returns, no
    /// connection of the node still answers.
    pub fn cut_connections(&self) {
        use diesel::RunQueryDsl;

        #[derive(diesel::QueryableByName)]
        struct Remaining {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }

        let mut admin = admin().expect("admin connection");
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS false",
                self.name
            ))
            .expect("refuse new connections");
        for _ in 0..50 {
            admin
                .batch_execute(&format!(
                    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
                     WHERE datname = '{}'",
                    self.name
                ))
                .expect("terminate connections");
            let left: Remaining = diesel::sql_query(format!(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ))
            .get_result(&mut admin)
            .expect("count connections");
            if left.n == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("the test database still has connections after 50 attempts to cut them");
    }

    pub fn restore_connections(&self) {
        let mut admin = admin().expect("admin connection");
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {} ALLOW_CONNECTIONS true",
                self.name
            ))
            .expect("restore connections");
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&admin_url()) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
