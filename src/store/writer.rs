//! SQLite writes: one writer at a time inside the process, and group commit on the hot paths.
//!
//! SQLite has one write lock per database. Writers that find it taken sleep in SQLite's busy
//! handler and retry, with no order among them; and every commit appends each page it dirtied
//! to the WAL, so a transaction that inserts one token writes a dozen pages.
//!
//! Two things follow:
//!
//! - **An in-process write lock, first come first served** (`WriteLock`): every
//!   `write_transaction` of `Db::run` work on SQLite takes it before `BEGIN IMMEDIATE`. Ward's
//!   own writers queue in order instead of sleeping and polling; only other processes (the CLI)
//!   still meet SQLite's busy timeout.
//! - **Group commit** (`Combiner`, used through `Db::write`): the token endpoint's work, the
//!   audit events of refusals that come in floods (shed sign-ins), and the audit linker's
//!   batches go to one writer thread with
//!   its own connection, which runs every piece of work waiting at that moment inside one
//!   transaction and commits once. Each piece runs as it would alone: its own
//!   `write_transaction`s become savepoints, so a refusal or an injected fault rolls back that
//!   piece's writes only, and what it writes outside them commits as autocommit would. Nobody
//!   hears an answer before the commit: when the batch cannot commit, every piece in it answers
//!   "unavailable" (503), never a success that did not last. Changes published by the batch
//!   reach this node's caches after the commit, before any answer.
//!
//! A batch is poisoned, rolled back whole and its connection discarded when a piece panics,
//! SQLite ends the transaction underneath it (disk full, I/O error: seen by a rollback hook),
//! or a savepoint cannot be undone (`poison`): the pieces before it would otherwise be reported
//! as done. The writer's connection refuses every commit but the batch's own (a commit hook), so
//! nothing a piece does after such a failure can commit on its own either.

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{changes, ConnectionManager, DbConnection, StoreError};

/// The most pieces of work one transaction carries.
const MAX_BATCH: usize = 64;
/// Pieces waiting for the writer beyond the one running; more wait as futures for a place.
const QUEUE: usize = 1024;

/// The in-process SQLite write lock of one database. `tokio::sync::Mutex` is fair (FIFO).
pub(super) type WriteLock = Arc<tokio::sync::Mutex<()>>;

thread_local! {
    static LOCK: RefCell<Option<WriteLock>> = const { RefCell::new(None) };
    /// This thread holds its database's write lock (a top-level write transaction, or the
    /// writer running a batch): a second top-level transaction on it would wait for itself.
    static HOLDING: Cell<bool> = const { Cell::new(false) };
    /// A savepoint on this thread could not be released or rolled back: the transaction around
    /// it must not commit.
    static POISONED: Cell<bool> = const { Cell::new(false) };
}

/// Marks the open transaction on this thread as one that must not commit.
pub(super) fn poison() {
    POISONED.with(|p| p.set(true));
}

/// Whether the open transaction was poisoned since the last call; clears the mark.
pub(super) fn take_poison() -> bool {
    POISONED.with(|p| p.replace(false))
}

/// Runs `work` with `lock` as the write lock `write_transaction` takes on this thread.
pub(super) fn with_write_lock<T>(lock: Option<WriteLock>, work: impl FnOnce() -> T) -> T {
    super::with_thread_local(&LOCK, lock, work)
}

/// This thread's hold on its write lock, released on drop.
pub(super) struct Held {
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Held {
    fn mark() -> Self {
        HOLDING.with(|h| h.set(true));
        Self { _guard: None }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HOLDING.with(|h| h.set(false));
    }
}

/// Takes this thread's write lock, if it has one (blocking threads of `Db::run`; not the CLI),
/// for a top-level write transaction. Refused on a thread that holds it already: a transaction
/// begun while another is still open on this thread (the writer's batch, or one whose
/// transaction state was reset underneath) would otherwise wait for itself forever, or commit
/// alone in the middle of a batch.
pub(super) fn hold() -> Result<Option<Held>, StoreError> {
    if HOLDING.with(Cell::get) {
        return Err(StoreError::Corrupt(
            "a write transaction was begun while this thread's previous one is still open".into(),
        ));
    }
    Ok(LOCK.with(|l| l.borrow().clone()).map(|lock| {
        let guard = lock.blocking_lock_owned();
        HOLDING.with(|h| h.set(true));
        Held {
            _guard: Some(guard),
        }
    }))
}

/// One piece of work waiting for the writer, with its answer's way back.
trait Job: Send {
    fn run(&mut self, conn: &mut DbConnection);
    /// `Ok` once the batch committed: the piece's own result goes back. Otherwise the error.
    fn finish(self: Box<Self>, batch: Result<(), StoreError>);
}

struct Pending<T, E, F> {
    work: Option<F>,
    result: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Job for Pending<T, E, F>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E> + Send,
    T: Send,
    E: From<StoreError> + Send,
{
    fn run(&mut self, conn: &mut DbConnection) {
        if let Some(work) = self.work.take() {
            self.result = Some(work(conn));
        }
    }

    fn finish(self: Box<Self>, batch: Result<(), StoreError>) {
        let answer = match (batch, self.result) {
            (Ok(()), Some(result)) => result,
            (Err(e), _) => Err(E::from(e)),
            (Ok(()), None) => Err(E::from(StoreError::Unavailable(
                "the work did not run".into(),
            ))),
        };
        // The caller may have gone away; the work is done either way.
        let _ = self.reply.send(answer);
    }
}

/// The group-commit writer of one SQLite database (see the module docs). Its thread ends when
/// the last `Db` handle holding it is dropped.
pub(super) struct Combiner {
    queue: mpsc::Sender<Box<dyn Job>>,
    totals: Arc<Totals>,
}

/// What the writer has committed since it started: transactions, and pieces of work in them.
/// Their ratio is the mean batch size, group commit's gain.
#[derive(Debug, Default)]
pub(super) struct Totals {
    batches: std::sync::atomic::AtomicU64,
    pieces: std::sync::atomic::AtomicU64,
}

/// A reading of the writer's totals: monotonic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommits {
    /// Transactions the writer committed.
    pub batches: u64,
    /// Pieces of work they carried (each answered once its transaction committed).
    pub pieces: u64,
}

impl Totals {
    /// Pieces first, then the batch (release): a reader that sees a batch sees its pieces.
    fn committed(&self, pieces: usize) {
        self.pieces.fetch_add(pieces as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Release);
    }

    fn read(&self) -> GroupCommits {
        let batches = self.batches.load(Ordering::Acquire);
        GroupCommits {
            batches,
            pieces: self.pieces.load(Ordering::Relaxed),
        }
    }
}

/// What the writer thread needs besides its queue.
pub(super) struct WriterSetup {
    pub manager: ConnectionManager,
    pub lock: WriteLock,
    pub sink: Arc<std::sync::OnceLock<Arc<dyn changes::ChangeSink>>>,
    pub identity: Arc<str>,
}

impl Combiner {
    pub(super) fn start(setup: WriterSetup) -> Result<Self, StoreError> {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let totals = Arc::new(Totals::default());
        let counted = Arc::clone(&totals);
        std::thread::Builder::new()
            .name("ward-sqlite-writer".into())
            .spawn(move || writer_loop(jobs, setup, &counted))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
        Ok(Self { queue, totals })
    }

    /// What this writer has committed so far.
    pub(super) fn totals(&self) -> GroupCommits {
        self.totals.read()
    }

    /// Queues `work` (waiting at most `wait` for a place) and answers its result once the
    /// transaction that carried it committed.
    pub(super) async fn submit<T, E, F>(&self, wait: std::time::Duration, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Pending {
            work: Some(work),
            result: None,
            reply,
        });
        match tokio::time::timeout(wait, self.queue.send(job)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(E::from(StoreError::Unavailable(
                    "the database writer stopped".into(),
                )))
            }
            Err(_) => {
                return Err(E::from(StoreError::Unavailable(
                    "the database writer is overloaded".into(),
                )))
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(E::from(StoreError::Unavailable(
                "the database writer stopped".into(),
            )))
        })
    }
}

/// The writer connection's page cache: 32 MiB.
const WRITER_CACHE_PRAGMA: &str = "PRAGMA cache_size = -32768;";

/// The writer's own connection, with the hooks that keep a batch whole.
struct WriterConnection {
    conn: DbConnection,
    /// Set only while the batch itself commits; the commit hook refuses every other commit.
    committing: Arc<AtomicBool>,
    /// Set by the rollback hook: SQLite rolled the transaction back (an error, not a savepoint).
    rolled_back: Arc<AtomicBool>,
}

impl WriterConnection {
    fn open(manager: &ConnectionManager) -> Result<Self, String> {
        let mut conn = manager
            .establish()
            .map_err(|e| format!("cannot connect: {e}"))?;
        let committing = Arc::new(AtomicBool::new(false));
        let rolled_back = Arc::new(AtomicBool::new(false));
        let DbConnection::Sqlite(inner) = &mut conn else {
            return Err("group commit is for SQLite".into());
        };
        // The token endpoint's writes all go through this connection: a page cache big enough
        // for the hot ends of the token tables' indexes saves a read per page (SQLite's default
        // is 2 MiB; the cache fills only as pages are used, and is dropped whenever another
        // connection commits: housekeeping, sign-ins, the admin API).
        inner
            .batch_execute(WRITER_CACHE_PRAGMA)
            .map_err(|e| format!("cannot size the page cache: {e}"))?;
        let allowed = Arc::clone(&committing);
        inner.on_commit(move || {
            if allowed.load(Ordering::SeqCst) {
                diesel::sqlite::CommitDecision::Proceed
            } else {
                diesel::sqlite::CommitDecision::Rollback
            }
        });
        let seen = Arc::clone(&rolled_back);
        inner.on_rollback(move || seen.store(true, Ordering::SeqCst));
        Ok(Self {
            conn,
            committing,
            rolled_back,
        })
    }
}

fn writer_loop(mut jobs: mpsc::Receiver<Box<dyn Job>>, setup: WriterSetup, totals: &Totals) {
    let mut conn: Option<WriterConnection> = None;
    while let Some(first) = jobs.blocking_recv() {
        // A bug that panics outside a piece (a cache sink, say) costs that batch's answers
        // (their callers hear "unavailable"), never the writer.
        let survived = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // The batch is gathered once the lock is ours: what arrived while another writer
            // held it rides along.
            let held = setup.lock.blocking_lock();
            let marked = Held::mark();
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let sink = setup.sink.get().cloned();
            let finished = changes::with_sink(sink, || {
                crate::fault::scoped(&setup.identity, || {
                    run_batch(&mut conn, &setup, totals, batch)
                })
            });
            drop(marked);
            drop(held);
            for (job, outcome) in finished {
                job.finish(outcome);
            }
        }));
        if survived.is_err() {
            conn = None;
            let _ = take_poison();
            tracing::error!(
                "the SQLite writer recovered from a panic; its batch was answered as unavailable"
            );
        }
    }
}

type Finished = Vec<(Box<dyn Job>, Result<(), StoreError>)>;

/// Runs one batch (under the write lock); answers each piece's outcome, to be delivered once
/// the lock is released.
fn run_batch(
    slot: &mut Option<WriterConnection>,
    setup: &WriterSetup,
    totals: &Totals,
    batch: Vec<Box<dyn Job>>,
) -> Finished {
    let mut finished: Finished = Vec::with_capacity(batch.len());
    // The same per-piece fault point as `Db::run`: the database "cannot be reached".
    let mut ready = Vec::with_capacity(batch.len());
    for job in batch {
        match crate::fault::point(crate::fault::Point::DbConnect) {
            Ok(()) => ready.push(job),
            Err(e) => finished.push((job, Err(e))),
        }
    }
    if ready.is_empty() {
        return finished;
    }
    let outcome = match slot {
        Some(conn) => commit_together(conn, &mut ready),
        None => match WriterConnection::open(&setup.manager) {
            Ok(conn) => commit_together(slot.insert(conn), &mut ready),
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(()) => totals.committed(ready.len()),
        // A connection that failed a batch is not trusted with the next one.
        Err(_) => *slot = None,
    }
    for job in ready {
        let result = match &outcome {
            Ok(()) => Ok(()),
            Err(reason) => Err(StoreError::Unavailable(reason.clone())),
        };
        finished.push((job, result));
    }
    finished
}

/// Runs every piece in one `BEGIN IMMEDIATE` transaction and commits once. `Err` (with the
/// reason) when nothing of the batch committed.
fn commit_together(
    writer: &mut WriterConnection,
    batch: &mut [Box<dyn Job>],
) -> Result<(), String> {
    type Manager = <DbConnection as Connection>::TransactionManager;
    let conn = &mut writer.conn;
    let DbConnection::Sqlite(inner) = conn else {
        return Err("group commit is for SQLite".into());
    };
    AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")
        .map_err(|e| format!("cannot begin: {e}"))?;
    writer.rolled_back.store(false, Ordering::SeqCst);
    let _ = take_poison();
    let open = changes::transaction_began();
    for job in batch.iter_mut() {
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| job.run(conn)));
        let problem = if ran.is_err() {
            Some("a piece of work failed unexpectedly; its batch was rolled back")
        } else if writer.rolled_back.load(Ordering::SeqCst) || !matches!(depth(conn), Ok(Some(1))) {
            Some("the database ended the transaction; the batch was rolled back")
        } else if take_poison() {
            Some("a savepoint could not be undone; the batch was rolled back")
        } else {
            None
        };
        if let Some(problem) = problem {
            open.ended(false);
            let _ = Manager::rollback_transaction(conn);
            return Err(problem.into());
        }
    }
    writer.committing.store(true, Ordering::SeqCst);
    let committed = Manager::commit_transaction(conn);
    writer.committing.store(false, Ordering::SeqCst);
    open.ended(committed.is_ok());
    committed.map_err(|e| {
        let _ = Manager::rollback_transaction(conn);
        format!("cannot commit: {e}")
    })
}

/// How many transactions (the outer one and savepoints) are open on `conn`.
pub(super) fn depth(conn: &mut DbConnection) -> diesel::QueryResult<Option<u32>> {
    <DbConnection as Connection>::TransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map(|d| d.map(std::num::NonZeroU32::get))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::changes::{self, Change, ChangeSink};
    use super::super::{meta, migrate, write_transaction, Db, DbConnection, StoreError};
    use super::GroupCommits;
    use crate::config::DatabaseTarget;

    #[derive(Default)]
    struct Seen(Mutex<Vec<Change>>);

    impl ChangeSink for Seen {
        fn apply(&self, changes: &[Change]) {
            self.0.lock().unwrap().extend_from_slice(changes);
        }
    }

    fn open(dir: &tempfile::TempDir) -> (Db, Arc<Seen>) {
        let target = DatabaseTarget::Sqlite(dir.path().join("ward.db"));
        let db = Db::open(&target, 4, std::time::Duration::from_secs(5)).unwrap();
        migrate::run_pending(&mut db.conn().unwrap()).unwrap();
        let seen = Arc::new(Seen::default());
        db.attach(seen.clone());
        (db, seen)
    }

    fn value(db: &Db, key: &str) -> Option<String> {
        meta::get(&mut db.conn().unwrap(), key).unwrap()
    }

    /// The writer still commits new work (after a batch that failed).
    async fn writes_again(db: &Db) {
        db.write(|conn| meta::insert(conn, "after", "x"))
            .await
            .unwrap();
        assert!(value(db, "after").is_some());
    }

    /// Holds the in-process write lock while `submit` queues work, so the writer gathers all of
    /// it into one batch when the lock is let go.
    async fn in_one_batch<T>(db: &Db, submit: impl FnOnce() -> T) -> T {
        let lock = db.write_lock.clone().expect("SQLite has a write lock");
        let held = lock.lock_owned().await;
        let queued = submit();
        // Let the writer take the first piece and wait for the lock.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(held);
        queued
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_piece_that_fails_rolls_back_alone_and_its_changes_reach_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let (db, seen) = open(&dir);
        let tasks = in_one_batch(&db, || {
            (0..30)
                .map(|i| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        db.write(move |conn| {
                            // Outside a transaction: lasts like an autocommit write.
                            meta::insert(conn, &format!("free:{i}"), "x")?;
                            write_transaction(conn, |conn| {
                                meta::insert(conn, &format!("tx:{i}"), "x")?;
                                changes::publish(conn, Change::User(format!("u{i}")))?;
                                if i % 3 == 0 {
                                    return Err(StoreError::Corrupt("refused".into()));
                                }
                                Ok(i)
                            })
                        })
                        .await
                    })
                })
                .collect::<Vec<_>>()
        })
        .await;
        for (i, task) in tasks.into_iter().enumerate() {
            let result = task.await.unwrap();
            assert_eq!(result.is_ok(), i % 3 != 0, "piece {i}: {result:?}");
            assert!(value(&db, &format!("free:{i}")).is_some(), "piece {i}");
            assert_eq!(
                value(&db, &format!("tx:{i}")).is_some(),
                i % 3 != 0,
                "piece {i}"
            );
        }
        let seen = seen.0.lock().unwrap().clone();
        for i in 0..30 {
            assert_eq!(
                seen.contains(&Change::User(format!("u{i}"))),
                i % 3 != 0,
                "change of piece {i}"
            );
        }
        // Every piece rode in a committed transaction, refused ones too; most shared one.
        let totals = db.group_commits().expect("SQLite has a writer");
        assert_eq!(totals.pieces, 30, "{totals:?}");
        assert!((1..30).contains(&totals.batches), "{totals:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_cannot_commit_reports_no_success_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (db, seen) = open(&dir);
        let (first, second) = in_one_batch(&db, || {
            let (a, b) = (db.clone(), db.clone());
            let first = tokio::spawn(async move {
                a.write(|conn| {
                    meta::insert(conn, "first", "x")?;
                    changes::publish(conn, Change::User("first".into()))
                })
                .await
            });
            let second = tokio::spawn(async move {
                b.write(|conn| -> Result<(), StoreError> {
                    meta::insert(conn, "second", "x")?;
                    panic!("a bug in the second piece")
                })
                .await
            });
            (first, second)
        })
        .await;
        // The first piece succeeded on its own, but its batch did not commit: it must not hear
        // "done", and nothing of it may last.
        assert!(matches!(
            first.await.unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert!(second.await.unwrap().is_err());
        assert_eq!(value(&db, "first"), None);
        assert_eq!(value(&db, "second"), None);
        assert!(seen.0.lock().unwrap().is_empty());
        // A batch that did not commit is not counted as one.
        assert_eq!(db.group_commits(), Some(GroupCommits::default()));
        // The writer survived the panic, on a fresh connection.
        writes_again(&db).await;
        assert_eq!(
            db.group_commits(),
            Some(GroupCommits {
                batches: 1,
                pieces: 1
            })
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_ended_underneath_fails_the_whole_batch_and_nothing_commits_alone() {
        use diesel::connection::SimpleConnection;
        let dir = tempfile::tempdir().unwrap();
        let (db, _seen) = open(&dir);
        let (first, second) = in_one_batch(&db, || {
            let (a, b) = (db.clone(), db.clone());
            let first =
                tokio::spawn(async move { a.write(|conn| meta::insert(conn, "first", "x")).await });
            let second = tokio::spawn(async move {
                b.write(|conn| {
                    meta::insert(conn, "second", "x")?;
                    // What SQLite does on a full disk or an I/O error: the transaction is gone.
                    if let DbConnection::Sqlite(inner) = conn {
                        inner.batch_execute("ROLLBACK").map_err(StoreError::from)?;
                    }
                    // Whatever the piece writes next must not commit on its own.
                    let _ = meta::insert(conn, "after-rollback", "x");
                    Ok::<_, StoreError>(())
                })
                .await
            });
            (first, second)
        })
        .await;
        for answer in [first.await.unwrap(), second.await.unwrap()] {
            assert!(
                matches!(answer, Err(StoreError::Unavailable(_))),
                "{answer:?}"
            );
        }
        for key in ["first", "second", "after-rollback"] {
            assert_eq!(value(&db, key), None, "{key} committed");
        }
        writes_again(&db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_top_level_transaction_on_a_thread_holding_the_lock_is_refused_not_a_deadlock()
    {
        use diesel::connection::SimpleConnection;
        let dir = tempfile::tempdir().unwrap();
        let (db, _seen) = open(&dir);
        let work = db.run(|conn| {
            write_transaction(conn, |conn| {
                // SQLite ends the transaction with an error: diesel forgets it was open.
                if let DbConnection::Sqlite(inner) = conn {
                    let _ = inner.batch_execute("ROLLBACK; SELECT * FROM no_such_table");
                }
                write_transaction(conn, |conn| meta::insert(conn, "inner", "x"))
            })
        });
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), work)
            .await
            .expect("no deadlock");
        assert!(answered.is_err(), "{answered:?}");
        assert_eq!(value(&db, "inner"), None);
        // The lock was given back.
        db.run(|conn| write_transaction(conn, |conn| meta::insert(conn, "next", "x")))
            .await
            .unwrap();
    }

    /// How many times the SQLite write-ahead log of the database in `dir` was started over: the
    /// checkpoint sequence number of the log's header (bytes 12..16), which SQLite counts up
    /// whenever a writer starts writing the log from its beginning again.
    fn log_restarts(dir: &tempfile::TempDir) -> u32 {
        let header = std::fs::read(dir.path().join("ward.db-wal")).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    /// Under writes that never pause, the server's checkpoints still let the writer start the log
    /// over. Without that (a plain `PASSIVE` checkpoint, which never catches up with a busy
    /// writer) the log grew until SQLite's automatic checkpoint ran inside a commit, with two
    /// `fsync`s: 30–80 ms token responses in the refresh benchmark.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn background_checkpoints_let_a_busy_writer_start_the_log_over() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = open(&dir);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (db, stop) = (db.clone(), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let (key, value) = (format!("w{w}:{i}"), "x".repeat(300));
                        db.write(move |conn| meta::insert(conn, &key, &value))
                            .await
                            .unwrap();
                        i += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let before = log_restarts(&dir);
        const CHECKPOINTS: u32 = 8;
        for _ in 0..CHECKPOINTS {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let left = db.run(super::super::checkpoint_wal).await.unwrap();
            let left = left.expect("a SQLite checkpoint reports the log");
            assert!(left.complete(), "{left:?}");
        }
        // The writers' next commits start the log over after the last checkpoint too.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let restarts = log_restarts(&dir) - before;
        assert!(
            restarts >= CHECKPOINTS - 1,
            "the log was started over {restarts} times after {CHECKPOINTS} checkpoints"
        );
    }
}
