//! Storage: one diesel schema over SQLite (embedded, default) and PostgreSQL (production and
//! several nodes), chosen from the URL scheme (DESIGN.md §4).
//!
//! Every protocol step runs as one closure over one connection inside one transaction, on a
//! blocking thread (`Db::run`), never on the async executor. SQLite write transactions begin
//! `IMMEDIATE` so concurrent writers queue on the busy timeout instead of failing with
//! "database is locked" halfway through.

/// Runs `$body` with `$c` bound to the connection's own backend connection (`SqliteConnection`
/// or `PgConnection`), for the statements on the hot paths: through `DbConnection`, diesel's
/// generated multi-backend layer renders a query's whole SQL text again on every run (to find
/// its prepared statement and to collect its binds), even when the statement is cached.
macro_rules! on_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::DbConnection::Sqlite($c) => $body,
            $crate::store::DbConnection::Postgres($c) => $body,
        }
    };
}

pub mod audit_events;
pub mod changes;
pub mod clients;
pub mod credentials;
pub mod enrolment;
pub mod grants;
pub mod meta;
pub mod migrate;
pub mod passkeys;
pub mod patients;
pub mod roles;
pub mod schema;
pub mod signing_keys;
pub mod together;
pub mod users;
mod writer;
pub use writer::GroupCommits;

use std::path::{Path, PathBuf};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;

use crate::config::DatabaseTarget;

/// One connection to either backend.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl DbConnection {
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had in time: the database is down or overloaded (→ 503).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the failure is the database being unreachable, rather than a bug.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Query(diesel::result::Error::DatabaseError(kind, info)) => {
                matches!(kind, diesel::result::DatabaseErrorKind::ClosedConnection)
                    || info.message().contains("database is locked")
                    || info.message().contains("terminating connection")
            }
            _ => false,
        }
    }
}

/// Opens connections of the configured backend, with SQLite's PRAGMAs on every connection.
#[derive(Debug, Clone)]
pub struct ConnectionManager {
    target: DatabaseTarget,
}

/// WAL with `synchronous = NORMAL` (durable at checkpoints, never corrupt); savepoint and
/// statement journals in memory (group commit runs every piece of work in a savepoint, and a
/// journal file would cost a write per page it touches). A server checkpoints in the
/// background about once a second (`checkpoint_wal`); the automatic checkpoint, which runs
/// inside whichever commit crosses the threshold, is only the safety net (256 MiB of WAL: a
/// second of the refresh benchmark's writes is about 140 MiB).
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
     PRAGMA busy_timeout = 5000; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY; \
     PRAGMA wal_autocheckpoint = 65536;";

/// Runs `work` with the thread-local `slot` set to `value`, and puts back what it held before
/// once `work` ends, also by unwinding (the writer's lock and the change sink of `Db::run` work).
fn with_thread_local<T: 'static, R>(
    slot: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>,
    value: Option<T>,
    work: impl FnOnce() -> R,
) -> R {
    struct Reset<T: 'static> {
        slot: &'static std::thread::LocalKey<std::cell::RefCell<Option<T>>>,
        previous: Option<T>,
    }
    impl<T: 'static> Drop for Reset<T> {
        fn drop(&mut self) {
            let previous = self.previous.take();
            self.slot.with(|s| *s.borrow_mut() = previous);
        }
    }
    let previous = slot.with(|s| std::mem::replace(&mut *s.borrow_mut(), value));
    let _reset = Reset { slot, previous };
    work()
}

/// A new key for a row that is inserted often and looked up by key (token families, access
/// tokens): a time-ordered UUID (v7: milliseconds, a counter within the millisecond, random
/// bits). Such rows land at the end of their indexes, so a batch of inserts dirties a page or two
/// per index instead of one random page per row (random v4 keys cost SQLite a page read and a WAL
/// frame per row and index). These keys are names, never secrets: nothing accepts one from
/// outside as proof of anything, and the time they show is already in the token (`iat`).
pub fn new_row_key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What a checkpoint left: whether another checkpoint was running (then nothing was copied),
/// the frames in the SQLite write-ahead log, and how many of them are now in the database file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, diesel::QueryableByName)]
pub struct WalCheckpoint {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub busy: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt, column_name = log)]
    pub frames: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt, column_name = checkpointed)]
    pub copied: i64,
}

impl WalCheckpoint {
    /// Every frame the log held when this pass began is in the database file. With the writer
    /// held off (the last pass of `checkpoint_wal`), that is every frame, and the writer's next
    /// commit starts the log over from its beginning, unless a reader still holds a snapshot
    /// that needs the log.
    pub fn complete(&self) -> bool {
        self.busy == 0 && self.frames >= 0 && self.copied >= self.frames
    }
}

/// Copies what the SQLite write-ahead log holds into the database file; `None` on PostgreSQL.
/// Run about once a second by a server, off the request path: one checkpoint writes a page
/// rewritten by a thousand commits once, and one `fsync` serves them all.
///
/// In passes. The first copies the bulk while Ward's writers go on (`PASSIVE`). Alone it never
/// catches up with a busy writer: it copies the frames that were there when it began while the
/// writer appends more, and SQLite starts the log over only once every frame is copied. The log
/// then grew until SQLite's automatic checkpoint ran inside the writer's commits, with two
/// `fsync`s each (30–80 ms commits in the refresh benchmark). So further passes copy what was
/// written meanwhile, each a shorter catch-up than the one before, until only a little is left;
/// the last pass copies that little with this process's writers held off (the in-process write
/// lock, for 3–15 ms in the refresh benchmark, mostly the pass's two `fsync`s; logged at debug
/// level), and the writer's next commit starts the log over: it stays about a second of writes
/// long.
pub fn checkpoint_wal(conn: &mut DbConnection) -> Result<Option<WalCheckpoint>, StoreError> {
    /// Frames written during a pass that are few enough to copy with the writer held off.
    const FEW_FRAMES: i64 = 256;
    /// Catch-up passes before the last one, however many frames they leave.
    const MAX_CATCH_UP: usize = 3;
    let DbConnection::Sqlite(inner) = conn else {
        return Ok(None);
    };
    let passive = |c: &mut SqliteConnection| -> Result<WalCheckpoint, StoreError> {
        Ok(diesel::RunQueryDsl::get_result(
            diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)"),
            c,
        )?)
    };
    let mut last = passive(inner)?;
    for _ in 0..MAX_CATCH_UP {
        let next = passive(inner)?;
        // Fewer frames than before: the log was started over meanwhile.
        let written_meanwhile = next.frames - last.frames;
        last = next;
        if next.busy != 0 || written_meanwhile < FEW_FRAMES {
            break;
        }
    }
    let micros = |since: std::time::Instant| u64::try_from(since.elapsed().as_micros());
    let asked = std::time::Instant::now();
    let _held = writer::hold()?;
    let waited = micros(asked);
    let held_since = std::time::Instant::now();
    let done = passive(inner)?;
    tracing::debug!(
        waited_us = waited.unwrap_or(u64::MAX),
        held_us = micros(held_since).unwrap_or(u64::MAX),
        frames = done.frames,
        "WAL checkpoint: last pass with the writer held off"
    );
    Ok(Some(done))
}

/// Bytes of heap SQLite holds in this process now: every connection's page cache (up to the
/// cache size each is given), schemas and prepared statements. Process-wide; 0 on PostgreSQL.
pub fn sqlite_heap_bytes() -> i64 {
    // SAFETY: a read of SQLite's global memory counter, which SQLite keeps thread-safe.
    unsafe { libsqlite3_sys::sqlite3_memory_used() }
}

/// Plans each SQLite statement once, when it is prepared (the "query planner stability
/// guarantee", `SQLITE_DBCONFIG_ENABLE_QPSG`).
///
/// Without it SQLite (3.54 here) marks a statement for re-planning when a value bound to it
/// might change the plan: `LIMIT ?` (every diesel `.first()`), a bound `LIKE` pattern. Diesel
/// binds every parameter again on each run of a cached statement (and clears the bindings
/// after it), which SQLite counts as such a change, so each of those statements was parsed and
/// planned again on every run: 8% of the CPU of a sign-in flood. Ward's queries look rows up by
/// key and index; none gains from a plan chosen for particular values (and Ward collects no
/// statistics: it never runs `ANALYZE`).
fn plan_statements_once(conn: &mut SqliteConnection) -> Result<(), diesel::ConnectionError> {
    use libsqlite3_sys::{sqlite3_db_config, SQLITE_DBCONFIG_ENABLE_QPSG, SQLITE_OK};
    let mut enabled: std::ffi::c_int = 0;
    // SAFETY: `db` is this open connection's handle, used on this thread only for the length of
    // the call; SQLITE_DBCONFIG_ENABLE_QPSG takes an int and a pointer to an int, which SQLite
    // sets to the new state.
    let rc = unsafe {
        conn.with_raw_connection(|db| {
            sqlite3_db_config(
                db,
                SQLITE_DBCONFIG_ENABLE_QPSG,
                1 as std::ffi::c_int,
                &mut enabled as *mut std::ffi::c_int,
            )
        })
    };
    if rc == SQLITE_OK && enabled == 1 {
        Ok(())
    } else {
        Err(diesel::ConnectionError::BadConnection(format!(
            "SQLite refused the query planner stability guarantee (code {rc})"
        )))
    }
}

impl ConnectionManager {
    pub fn new(target: DatabaseTarget) -> Self {
        Self { target }
    }

    pub fn establish(&self) -> Result<DbConnection, diesel::ConnectionError> {
        match &self.target {
            DatabaseTarget::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(&sqlite_path(path))?;
                conn.batch_execute(SQLITE_PRAGMAS)
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                plan_statements_once(&mut conn)?;
                Ok(DbConnection::Sqlite(conn))
            }
            DatabaseTarget::Postgres(url) => Ok(DbConnection::Postgres(PgConnection::establish(
                &with_connect_timeout(url),
            )?)),
        }
    }
}

fn sqlite_path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// libpq waits for the OS TCP timeout by default; a dead database must fail fast instead.
fn with_connect_timeout(url: &str) -> String {
    if url.contains("connect_timeout=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&connect_timeout=3")
    } else {
        format!("{url}?connect_timeout=3")
    }
}

impl r2d2::ManageConnection for ConnectionManager {
    type Connection = DbConnection;
    type Error = diesel::ConnectionError;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        self.establish()
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.batch_execute("SELECT 1")
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)
    }

    /// A connection given back while a transaction is still open (work that panicked) is
    /// discarded, never handed to the next request mid-transaction.
    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        std::thread::panicking()
            || <DbConnection as Connection>::TransactionManager::is_broken_transaction_manager(conn)
    }
}

/// A pool of connections to the configured database.
#[derive(Clone)]
pub struct Db {
    pool: r2d2::Pool<ConnectionManager>,
    backend: Backend,
    /// One permit per pooled connection: database work waits here, as a cheap future, rather
    /// than as a blocked thread inside the pool (threads and memory stay bounded under load).
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    /// How long work waits for a permit before answering "unavailable" (503).
    wait: Duration,
    /// Where committed changes go on this node (its caches); set once by `attach`.
    sink: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn changes::ChangeSink>>>,
    /// Which database this is (the SQLite path or the PostgreSQL URL): test fault points are
    /// armed per database (`crate::fault`).
    identity: std::sync::Arc<str>,
    /// SQLite only: the in-process write lock and the group-commit writer (`writer`).
    write_lock: Option<writer::WriteLock>,
    combiner: Option<std::sync::Arc<writer::Combiner>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Db {
    /// Opens the pool lazily: the first connection is made on first use, so a node whose
    /// database is briefly down still starts serving `/healthz` and answers 503 elsewhere.
    pub fn open(
        target: &DatabaseTarget,
        pool_size: u32,
        connect_timeout: Duration,
    ) -> Result<Self, StoreError> {
        if let DatabaseTarget::Sqlite(path) = target {
            create_parent_dir(path)?;
        }
        let (backend, identity) = match target {
            DatabaseTarget::Sqlite(path) => (Backend::Sqlite, sqlite_path(path)),
            DatabaseTarget::Postgres(url) => (Backend::Postgres, url.clone()),
        };
        let pool = r2d2::Pool::builder()
            .max_size(pool_size)
            .min_idle(Some(0))
            .connection_timeout(connect_timeout)
            // A PostgreSQL connection can die while idle (server restart, proxy); a SQLite
            // file cannot, and the check would cost a statement per piece of work.
            .test_on_check_out(backend == Backend::Postgres)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(ConnectionManager::new(target.clone()));
        let sink: std::sync::Arc<std::sync::OnceLock<std::sync::Arc<dyn changes::ChangeSink>>> =
            std::sync::Arc::default();
        let identity: std::sync::Arc<str> = identity.into();
        let (write_lock, combiner) = match backend {
            Backend::Sqlite => {
                let lock = writer::WriteLock::default();
                let combiner = writer::Combiner::start(writer::WriterSetup {
                    manager: ConnectionManager::new(target.clone()),
                    lock: std::sync::Arc::clone(&lock),
                    sink: std::sync::Arc::clone(&sink),
                    identity: std::sync::Arc::clone(&identity),
                })?;
                (Some(lock), Some(std::sync::Arc::new(combiner)))
            }
            Backend::Postgres => (None, None),
        };
        Ok(Self {
            pool,
            backend,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(pool_size as usize)),
            wait: connect_timeout,
            sink,
            identity,
            write_lock,
            combiner,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQLite: what the group-commit writer has committed (`writer`); `None` on PostgreSQL.
    pub fn group_commits(&self) -> Option<GroupCommits> {
        self.combiner.as_ref().map(|c| c.totals())
    }

    /// Sends the changes this node commits (through `run`) to `sink` (its caches). Once only.
    pub fn attach(&self, sink: std::sync::Arc<dyn changes::ChangeSink>) {
        let _ = self.sink.set(sink);
    }

    /// The database's identity as fault points know it (`crate::fault`).
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// A connection for synchronous callers (the CLI, startup).
    pub fn conn(&self) -> Result<r2d2::PooledConnection<ConnectionManager>, StoreError> {
        self.pool
            .get()
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Run blocking database work off the async executor, at most one piece per pooled
    /// connection at a time.
    pub async fn run<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let permit = match tokio::time::timeout(
            self.wait,
            std::sync::Arc::clone(&self.permits).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(E::from(StoreError::Unavailable(
                    "no database connection became free in time".into(),
                )))
            }
        };
        let pool = self.pool.clone();
        let sink = self.sink.get().cloned();
        let identity = std::sync::Arc::clone(&self.identity);
        let write_lock = self.write_lock.clone();
        let joined = tokio::task::spawn_blocking(move || {
            // Held until the work ends, even if the request that asked for it went away.
            let _permit = permit;
            crate::fault::scoped(&identity, || {
                crate::fault::point(crate::fault::Point::DbConnect).map_err(E::from)?;
                let mut conn = pool
                    .get()
                    .map_err(|e| E::from(StoreError::Unavailable(e.to_string())))?;
                writer::with_write_lock(write_lock, || changes::with_sink(sink, || work(&mut conn)))
            })
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(e) => Err(E::from(StoreError::Unavailable(format!(
                "database task failed: {e}"
            )))),
        }
    }
}

impl Db {
    /// Like `run`, for the hot write paths (the token endpoint, the audit events of refusals that
    /// come in floods: shed sign-ins, failed client authentication; the audit linker's batches,
    /// which would otherwise take the write lock in between): on SQLite the work is
    /// group-committed with whatever else is waiting (`writer`), on PostgreSQL it is `run`.
    /// The work is written as for `run`: its `write_transaction`s are atomic on their own.
    pub async fn write<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        match &self.combiner {
            Some(combiner) => combiner.submit(self.wait, work).await,
            None => self.run(work).await,
        }
    }
}

fn create_parent_dir(path: &Path) -> Result<(), StoreError> {
    let parent: PathBuf = path.parent().map(Path::to_path_buf).unwrap_or_default();
    if parent.as_os_str().is_empty() || parent.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&parent)
        .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", parent.display())))
}

diesel::define_sql_function! {
    /// SQL `lower()`: searches compare case-insensitively on both backends (PostgreSQL's
    /// `LIKE` is case-sensitive, SQLite's is not for ASCII).
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// A window of a listing: at most `limit` rows after skipping `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

impl Page {
    /// Everything (the CLI's listings).
    pub const ALL: Page = Page {
        limit: i64::MAX,
        offset: 0,
    };
}

/// Run `work` in one write transaction: all of it commits, or none of it does.
///
/// On SQLite the transaction starts `BEGIN IMMEDIATE`, taking the write lock up front, so two
/// writers never both read and then fail to upgrade their lock; Ward's own writers first queue
/// in order on the in-process write lock (`writer`). Inside a transaction already open (a
/// group-committed batch, or an enclosing `write_transaction`) it is a savepoint: its writes
/// and published changes are undone alone when `work` fails, and last once the outer
/// transaction commits.
pub fn write_transaction<T, E, F>(conn: &mut DbConnection, work: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: From<StoreError>,
{
    if matches!(writer::depth(conn), Ok(Some(_))) {
        return savepoint(conn, work);
    }
    let _held = match conn {
        DbConnection::Sqlite(_) => writer::hold().map_err(E::from)?,
        DbConnection::Postgres(_) => None,
    };
    let _ = writer::take_poison();
    let begun = match conn {
        DbConnection::Sqlite(inner) => {
            AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")
        }
        DbConnection::Postgres(_) => {
            <DbConnection as Connection>::TransactionManager::begin_transaction(conn)
        }
    };
    begun.map_err(|e| E::from(StoreError::from(e)))?;
    let open = changes::transaction_began();
    match work(conn) {
        Ok(value) if writer::take_poison() => {
            open.ended(false);
            let _ = <DbConnection as Connection>::TransactionManager::rollback_transaction(conn);
            drop(value);
            Err(E::from(StoreError::Unavailable(
                "a savepoint could not be undone; nothing was committed".into(),
            )))
        }
        Ok(value) => {
            let committed =
                <DbConnection as Connection>::TransactionManager::commit_transaction(conn);
            // Published changes reach this node's caches only once they are durable.
            open.ended(committed.is_ok());
            committed.map_err(|e| E::from(StoreError::from(e)))?;
            Ok(value)
        }
        Err(err) => {
            open.ended(false);
            // The work's error is the one worth reporting; a failed rollback leaves the
            // connection broken and r2d2's check-out test discards it.
            let _ = <DbConnection as Connection>::TransactionManager::rollback_transaction(conn);
            Err(err)
        }
    }
}

fn savepoint<T, E, F>(conn: &mut DbConnection, work: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E>,
    E: From<StoreError>,
{
    type Manager = <DbConnection as Connection>::TransactionManager;
    Manager::begin_transaction(conn).map_err(|e| E::from(StoreError::from(e)))?;
    let mark = changes::savepoint_began();
    // A savepoint that can be neither released nor rolled back leaves the transaction around
    // it in an unknown state: it is poisoned, so it cannot commit.
    match work(conn) {
        Ok(value) => {
            let released = Manager::commit_transaction(conn);
            mark.ended(released.is_ok());
            if let Err(e) = released {
                writer::poison();
                return Err(E::from(StoreError::from(e)));
            }
            Ok(value)
        }
        Err(err) => {
            mark.ended(false);
            if Manager::rollback_transaction(conn).is_err() {
                writer::poison();
            }
            Err(err)
        }
    }
}

/// Serialise a critical section across every node sharing the database (PostgreSQL advisory
/// transaction lock, released at commit); on SQLite the `IMMEDIATE` write lock already does.
pub fn lock_for_transaction(conn: &mut DbConnection, lock: AdvisoryLock) -> Result<(), StoreError> {
    if let DbConnection::Postgres(pg) = conn {
        pg.batch_execute(&format!("SELECT pg_advisory_xact_lock({})", lock as i64))?;
    }
    Ok(())
}

/// Advisory lock ids, one per critical section.
#[derive(Debug, Clone, Copy)]
#[repr(i64)]
pub enum AdvisoryLock {
    Migrations = 0x5741_5244_0001,
    SigningKeys = 0x5741_5244_0002,
    AuditChain = 0x5741_5244_0003,
}

/// A SQLite database in `dir`, migrated, with a connection to it (unit tests of the store).
#[cfg(test)]
pub(crate) fn migrated_sqlite(dir: &tempfile::TempDir) -> DbConnection {
    let manager = ConnectionManager::new(DatabaseTarget::Sqlite(dir.path().join("ward.db")));
    let mut conn = manager.establish().expect("a SQLite connection");
    migrate::run_pending(&mut conn).expect("migrations");
    conn
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many times SQLite re-prepared the statements diesel keeps cached on `conn`.
    fn reprepares(conn: &mut SqliteConnection) -> i64 {
        use libsqlite3_sys::{sqlite3_next_stmt, sqlite3_stmt_status, SQLITE_STMTSTATUS_REPREPARE};
        // SAFETY: walks this connection's own prepared statements on this thread and reads a
        // counter of each; nothing is changed or freed.
        unsafe {
            conn.with_raw_connection(|db| {
                let mut total = 0i64;
                let mut stmt = sqlite3_next_stmt(db, std::ptr::null_mut());
                while !stmt.is_null() {
                    total += i64::from(sqlite3_stmt_status(stmt, SQLITE_STMTSTATUS_REPREPARE, 0));
                    stmt = sqlite3_next_stmt(db, stmt);
                }
                total
            })
        }
    }

    #[test]
    fn a_cached_sqlite_statement_is_not_planned_again_on_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = migrated_sqlite(&dir);
        meta::insert(&mut conn, "k", "v").unwrap();
        let get = |conn: &mut DbConnection| {
            // `.first()` binds `LIMIT ?`, which SQLite would otherwise re-plan on every run.
            assert_eq!(meta::get(conn, "k").unwrap().as_deref(), Some("v"));
            let DbConnection::Sqlite(inner) = conn else {
                unreachable!("a SQLite target gives a SQLite connection")
            };
            reprepares(inner)
        };
        // (The migrations' own statements were re-planned after their schema changes.)
        let before = get(&mut conn);
        for _ in 0..5 {
            get(&mut conn);
        }
        assert_eq!(get(&mut conn) - before, 0, "statements were planned again");
    }

    /// The plan SQLite chooses for `sql`, with its parameters unknown while it plans: how
    /// Ward's statements are planned too (once, when prepared: `plan_statements_once`).
    fn plan(conn: &mut DbConnection, sql: &str) -> String {
        #[derive(diesel::QueryableByName)]
        struct Step {
            #[diesel(sql_type = diesel::sql_types::Text)]
            detail: String,
        }
        let DbConnection::Sqlite(inner) = conn else {
            unreachable!("a SQLite target gives a SQLite connection")
        };
        let mut query = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}")).into_boxed();
        for _ in 0..sql.matches('?').count() {
            query = query
                .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(None::<String>);
        }
        let steps: Vec<Step> = diesel::RunQueryDsl::load(query, inner).unwrap();
        steps
            .into_iter()
            .map(|s| s.detail)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Mostly-NULL columns are indexed only where they hold a value (migration 11); the
    /// lookups Ward makes on them (the shapes diesel writes for the audit search by patient and
    /// a user's grants) must still use the index, and the audit linker's must still find the
    /// unlinked events through an index of those alone, never by walking every recent event
    /// (found in a profile: a partial index on `chain_seq` made the linker the busiest thread).
    #[test]
    fn lookups_on_sparse_columns_still_use_their_partial_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = migrated_sqlite(&dir);
        let expectations = [
            (
                "SELECT * FROM audit_events WHERE target_patient = ? ORDER BY id DESC LIMIT ?",
                "audit_events_patient",
            ),
            (
                "SELECT * FROM token_families WHERE revoked_at IS NULL AND expires_at > ? \
                 AND user_id = ?",
                "token_families_user",
            ),
            (
                "UPDATE token_families SET revoked_at = ? WHERE revoked_at IS NULL AND user_id = ?",
                "token_families_user",
            ),
        ];
        for (sql, index) in expectations {
            let plan = plan(&mut conn, sql);
            assert!(
                plan.contains(&format!("USING INDEX {index}")),
                "{sql}\n  planned as: {plan}"
            );
        }
        // The linker's reads (`any_unlinked_since`, `unlinked_since`, `count_unlinked_before`).
        let unlinked = [
            "SELECT COUNT(*) FROM audit_events WHERE chain_seq IS NULL \
             AND (occurred_at >= ? OR id <= ?)",
            "SELECT * FROM audit_events WHERE chain_seq IS NULL \
             AND (occurred_at >= ? OR id <= ?) ORDER BY id LIMIT ?",
            "SELECT COUNT(*) FROM audit_events WHERE chain_seq IS NULL AND occurred_at < ?",
        ];
        for sql in unlinked {
            let plan = plan(&mut conn, sql);
            let through_unlinked = plan.contains("audit_events_chain_seq (chain_seq=?)")
                || plan.contains("USING INDEX audit_events_unlinked");
            assert!(
                through_unlinked && !plan.contains("audit_events_occurred"),
                "{sql}\n  planned as: {plan}"
            );
        }
    }
}
